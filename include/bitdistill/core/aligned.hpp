// Owning, 64-byte aligned storage for trivially copyable elements.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "bitdistill/core/alloc_counter.hpp"

namespace bitdistill {

/// Alignment of every buffer: one cache line, which is also one AVX-512 register.
inline constexpr std::size_t buffer_alignment = 64;

/// A heap array of `size()` elements aligned to `buffer_alignment`. Copying copies the
/// elements; moving transfers ownership. Elements are zero-initialised.
template <class T>
class AlignedBuffer {
    static_assert(std::is_trivially_copyable_v<T>,
                  "AlignedBuffer<T> holds raw bytes, so T must be trivially copyable");

public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t count) { allocate(count); }
    AlignedBuffer(const AlignedBuffer& other) : AlignedBuffer(other.size_) {
        if (size_ != 0) std::memcpy(data_, other.data_, size_ * sizeof(T));
    }
    AlignedBuffer(AlignedBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    AlignedBuffer& operator=(AlignedBuffer other) noexcept {
        swap(other);
        return *this;
    }
    ~AlignedBuffer() { std::free(data_); }

    void swap(AlignedBuffer& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
    }

    /// Resizes to `count` zeroed elements; keeps the allocation when `count` is unchanged.
    void assign_zero(std::size_t count) {
        if (count != size_) {
            std::free(data_);
            data_ = nullptr;
            size_ = 0;
            allocate(count);
        } else if (size_ != 0) {
            std::memset(data_, 0, size_ * sizeof(T));
        }
    }

    [[nodiscard]] T* data() noexcept { return data_; }
    [[nodiscard]] const T* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] T& operator[](std::size_t i) noexcept { return data_[i]; }
    [[nodiscard]] const T& operator[](std::size_t i) const noexcept { return data_[i]; }
    [[nodiscard]] T* begin() noexcept { return data_; }
    [[nodiscard]] T* end() noexcept { return data_ + size_; }
    [[nodiscard]] const T* begin() const noexcept { return data_; }
    [[nodiscard]] const T* end() const noexcept { return data_ + size_; }

private:
    void allocate(std::size_t count) {
        if (count == 0) return;
        // Round the byte count up to the alignment, as std::aligned_alloc requires.
        std::size_t bytes = (count * sizeof(T) + buffer_alignment - 1) / buffer_alignment *
                            buffer_alignment;
        data_ = static_cast<T*>(std::aligned_alloc(buffer_alignment, bytes));
        if (data_ == nullptr) throw std::bad_alloc();
        detail::count_allocation();
        std::memset(data_, 0, bytes);
        size_ = count;
    }

    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace bitdistill
