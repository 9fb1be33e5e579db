# The expression tests:
# - test_expr, and test_expr_no_simd, the same source built with BITDISTILL_NO_SIMD so that
#   every element-wise loop takes the scalar path that builds without SIMD support use;
# - test_readme_snippet, the README's first example, a program with its own main, also
#   compiled at -O0 with -march=native (expr_native_unoptimised, built but not run);
# - readme_snippet_in_sync, which checks that README.md contains that example verbatim. It
#   runs this file as a script (cmake -P), the branch right below.
if(CMAKE_SCRIPT_MODE_FILE)
  file(READ "${SNIPPET}" snippet_text)
  # Drop the comment lines at the top of the test source; the rest is the README example.
  string(REGEX REPLACE "^(//[^\n]*\n)+" "" snippet_text "${snippet_text}")
  if(NOT EXISTS "${README}")
    message(STATUS "SKIP: ${README} does not exist yet")
    return()
  endif()
  file(READ "${README}" readme_text)
  string(FIND "${readme_text}" "${snippet_text}" position)
  if(position EQUAL -1)
    message(FATAL_ERROR "README.md does not contain the example of ${SNIPPET} verbatim; copy "
                        "the source below its top comment into the README's first code block")
  endif()
  return()
endif()

bitdistill_add_test(test_expr LABELS expr)
bitdistill_add_test(test_expr_no_simd SOURCES test_expr.cpp LABELS expr)
target_compile_definitions(test_expr_no_simd PRIVATE BITDISTILL_NO_SIMD)
list(APPEND BITDISTILL_CUSTOM_TESTS test_expr test_expr_no_simd)

add_executable(test_readme_snippet test_readme_snippet.cpp)
bitdistill_configure_program(test_readme_snippet)
add_test(NAME test_readme_snippet COMMAND test_readme_snippet)
set_tests_properties(test_readme_snippet PROPERTIES LABELS expr)
list(APPEND BITDISTILL_CUSTOM_TESTS test_readme_snippet)

# The headers must also compile unoptimised for the build machine's instruction set, as the
# debug preset builds the examples; xsimd 8.1 has failed there for AVX-512BW.
include(CheckCXXCompilerFlag)
check_cxx_compiler_flag(-march=native BITDISTILL_HAS_MARCH_NATIVE)
if(BITDISTILL_HAS_MARCH_NATIVE)
  add_library(expr_native_unoptimised OBJECT test_readme_snippet.cpp)
  target_link_libraries(expr_native_unoptimised PRIVATE bitdistill::bitdistill)
  target_compile_options(expr_native_unoptimised PRIVATE -O0 -march=native -Wno-psabi)
endif()

add_test(NAME readme_snippet_in_sync
         COMMAND "${CMAKE_COMMAND}" "-DSNIPPET=${CMAKE_CURRENT_SOURCE_DIR}/test_readme_snippet.cpp"
                 "-DREADME=${PROJECT_SOURCE_DIR}/README.md" -P "${CMAKE_CURRENT_LIST_FILE}")
set_tests_properties(readme_snippet_in_sync PROPERTIES LABELS expr
                     SKIP_REGULAR_EXPRESSION "SKIP: ")
