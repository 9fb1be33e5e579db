# Checks one must-not-compile snippet. Run by the compile_fail_<name> tests as
#   cmake -DBUILD_DIR=<build tree> -DTARGET=<object target> -DSNIPPET=<source> [-DCONFIG=<cfg>]
#         -P check_compile_fails.cmake
# It passes when
#   1. the control build (target <TARGET>_control, the snippet compiled with
#      BITDISTILL_COMPILE_FAIL_CONTROL, which swaps in a supported pair) succeeds, and
#   2. the build of <TARGET> fails, and
#   3. the compiler output has a line naming the instantiation of no_matmul_kernel_for that
#      contains the `// expect-type:` strings of the snippet, in the order they are listed
#      (weights first, then activations), and the static_assert message of that template.
cmake_minimum_required(VERSION 3.25)

foreach(variable IN ITEMS BUILD_DIR TARGET SNIPPET)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "check_compile_fails.cmake: -D${variable}=... is missing")
  endif()
endforeach()
set(config_arguments "")
if(CONFIG)
  set(config_arguments --config "${CONFIG}")
endif()

file(STRINGS "${SNIPPET}" expect_lines REGEX "^// expect-type: ")
list(TRANSFORM expect_lines REPLACE "^// expect-type: " "")
list(LENGTH expect_lines expect_count)
if(NOT expect_count EQUAL 2)
  message(FATAL_ERROR "${SNIPPET}: expected two `// expect-type:` lines (weights, activations), "
                      "found ${expect_count}")
endif()

execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}_control" ${config_arguments}
  RESULT_VARIABLE control_result OUTPUT_VARIABLE control_output ERROR_VARIABLE control_output)
if(NOT control_result EQUAL 0)
  message(FATAL_ERROR "The control build of ${SNIPPET} (BITDISTILL_COMPILE_FAIL_CONTROL defined) "
                      "failed, so the snippet is broken apart from the line under test:\n"
                      "${control_output}")
endif()

execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}" ${config_arguments}
  RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(result EQUAL 0)
  message(FATAL_ERROR "${SNIPPET} compiled, but its pair of encodings has no kernel and must "
                      "be rejected at compile time")
endif()

if(NOT output MATCHES "matmul: no kernel multiplies these two encodings")
  message(FATAL_ERROR "${SNIPPET} failed to compile, but not with the no-kernel static_assert "
                      "of kernel_select.hpp:\n${output}")
endif()

# The line that names the instantiation, e.g.
#   In instantiation of 'struct bitdistill::expr::no_matmul_kernel_for<Lhs, Rhs>':
# Semicolons and square brackets are list syntax in CMake, so replace them before the
# output is split into a list of lines.
string(REPLACE ";" "," output_text "${output}")
string(REPLACE "[" "(" output_text "${output_text}")
string(REPLACE "]" ")" output_text "${output_text}")
string(REPLACE "\n" ";" output_lines "${output_text}")
set(found FALSE)
list(GET expect_lines 0 lhs_name)
list(GET expect_lines 1 rhs_name)
foreach(line IN LISTS output_lines)
  string(FIND "${line}" "no_matmul_kernel_for<" template_position)
  if(template_position EQUAL -1)
    continue()
  endif()
  string(SUBSTRING "${line}" ${template_position} -1 instantiation)
  string(FIND "${instantiation}" "${lhs_name}" lhs_position)
  string(FIND "${instantiation}" "${rhs_name}" rhs_position REVERSE)
  if(lhs_position GREATER -1 AND rhs_position GREATER lhs_position)
    set(found TRUE)
    message(STATUS "Rejected as expected: ${instantiation}")
    break()
  endif()
endforeach()
if(NOT found)
  message(FATAL_ERROR "${SNIPPET} failed to compile, but no line of the output names "
                      "no_matmul_kernel_for<${lhs_name}..., ${rhs_name}...>:\n${output}")
endif()
