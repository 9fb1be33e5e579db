# Must-not-compile tests. Each tests/compile_fail/*.cpp multiplies a pair of encodings that
# has no kernel. Its test builds the snippet as an object library with the project's flags
# and passes only if the build fails with the static_assert of expr/kernel_select.hpp and
# the compiler output names both encodings; compile_fail/check_compile_fails.cmake has the
# details. Each snippet also has a control target, built with BITDISTILL_COMPILE_FAIL_CONTROL,
# that swaps in a supported pair and must compile, so a typo cannot make a test pass.
file(GLOB BITDISTILL_COMPILE_FAIL_SNIPPETS CONFIGURE_DEPENDS
     "${CMAKE_CURRENT_SOURCE_DIR}/compile_fail/*.cpp")
foreach(snippet IN LISTS BITDISTILL_COMPILE_FAIL_SNIPPETS)
  get_filename_component(snippet_name "${snippet}" NAME_WE)
  set(target compile_fail_${snippet_name})

  add_library(${target} OBJECT EXCLUDE_FROM_ALL "${snippet}")
  add_library(${target}_control OBJECT EXCLUDE_FROM_ALL "${snippet}")
  target_compile_definitions(${target}_control PRIVATE BITDISTILL_COMPILE_FAIL_CONTROL)
  foreach(build IN ITEMS ${target} ${target}_control)
    bitdistill_configure_program(${build})
    # Type checking and template instantiation are what these tests are about; skipping code
    # generation halves the build time of each control.
    target_compile_options(${build} PRIVATE -fsyntax-only)
  endforeach()

  add_test(NAME ${target}
           COMMAND "${CMAKE_COMMAND}" "-DBUILD_DIR=${PROJECT_BINARY_DIR}" "-DTARGET=${target}"
                   "-DSNIPPET=${snippet}" "-DCONFIG=$<CONFIG>"
                   -P "${CMAKE_CURRENT_SOURCE_DIR}/compile_fail/check_compile_fails.cmake")
  # The tests run the build tool in the project's build tree; one at a time keeps two of
  # them from checking or regenerating the build system at once.
  set_tests_properties(${target} PROPERTIES LABELS compile_fail
                       RESOURCE_LOCK bitdistill_build_tree)
endforeach()
