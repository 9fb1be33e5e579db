# Helpers for the in-tree tests, benchmarks and examples (top-level builds only).

# Warnings and sanitizers for the project's own programs; never applied to the interface target.
function(bitdistill_configure_program target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wno-psabi)
  target_link_libraries(${target} PRIVATE bitdistill::bitdistill)
  if(BITDISTILL_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined
                           -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# Benchmarks and examples may be tuned for the build machine.
function(bitdistill_tune_native target)
  include(CheckCXXCompilerFlag)
  check_cxx_compiler_flag(-march=native BITDISTILL_HAS_MARCH_NATIVE)
  if(BITDISTILL_HAS_MARCH_NATIVE AND NOT BITDISTILL_PORTABLE)
    target_compile_options(${target} PRIVATE -march=native)
  endif()
endfunction()

# BITDISTILL_ALWAYS_ASSERT keeps internal invariants on in optimised builds.
option(BITDISTILL_ALWAYS_ASSERT "Keep internal assertions in optimised test builds" OFF)
if(BITDISTILL_ALWAYS_ASSERT)
  add_compile_definitions(BITDISTILL_ALWAYS_ASSERT=1)
endif()
