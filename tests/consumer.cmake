# Packaging tests. consumer_install installs this build to a prefix inside the build tree;
# consumer_find_package configures, builds and runs tests/consumer/find_package against that
# prefix, and consumer_add_subdirectory does the same for tests/consumer/add_subdirectory,
# which adds this source tree with add_subdirectory. Each run starts from empty directories.
# The consumers use the same compiler and build type as this build but never the sanitizer
# flags: packaging does not depend on them, test_expr runs the same code under the
# sanitizers, and sanitized consumer builds would take minutes in the sanitize preset.
set(BITDISTILL_CONSUMER_ROOT "${CMAKE_CURRENT_BINARY_DIR}/consumer")
set(BITDISTILL_CONSUMER_PREFIX "${BITDISTILL_CONSUMER_ROOT}/prefix")

set(BITDISTILL_CONSUMER_OPTIONS
    "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}"
    "-DCMAKE_BUILD_TYPE=$<CONFIG>")
if(CMAKE_MAKE_PROGRAM)
  set(BITDISTILL_CONSUMER_MAKE_PROGRAM --build-makeprogram "${CMAKE_MAKE_PROGRAM}")
endif()

add_test(NAME consumer_clean
         COMMAND "${CMAKE_COMMAND}" -E rm -rf "${BITDISTILL_CONSUMER_ROOT}")
set_tests_properties(consumer_clean PROPERTIES FIXTURES_SETUP bitdistill_consumer_clean
                     LABELS packaging)

add_test(NAME consumer_install
         COMMAND "${CMAKE_COMMAND}" --install "${PROJECT_BINARY_DIR}" --config $<CONFIG>
                 --prefix "${BITDISTILL_CONSUMER_PREFIX}")
set_tests_properties(consumer_install PROPERTIES
                     FIXTURES_REQUIRED bitdistill_consumer_clean
                     FIXTURES_SETUP bitdistill_installed
                     LABELS packaging)

add_test(NAME consumer_find_package
         COMMAND "${CMAKE_CTEST_COMMAND}" --build-and-test
                 "${CMAKE_CURRENT_SOURCE_DIR}/consumer/find_package"
                 "${BITDISTILL_CONSUMER_ROOT}/find_package"
                 --build-generator "${CMAKE_GENERATOR}" ${BITDISTILL_CONSUMER_MAKE_PROGRAM}
                 --build-config $<CONFIG>
                 --build-options ${BITDISTILL_CONSUMER_OPTIONS}
                                 "-DCMAKE_PREFIX_PATH=${BITDISTILL_CONSUMER_PREFIX}"
                                 "-DBITDISTILL_EXPECTED_VERSION=${PROJECT_VERSION}"
                 --test-command "${CMAKE_CTEST_COMMAND}" --output-on-failure)
set_tests_properties(consumer_find_package PROPERTIES
                     FIXTURES_REQUIRED "bitdistill_consumer_clean;bitdistill_installed"
                     LABELS packaging)

add_test(NAME consumer_add_subdirectory
         COMMAND "${CMAKE_CTEST_COMMAND}" --build-and-test
                 "${CMAKE_CURRENT_SOURCE_DIR}/consumer/add_subdirectory"
                 "${BITDISTILL_CONSUMER_ROOT}/add_subdirectory"
                 --build-generator "${CMAKE_GENERATOR}" ${BITDISTILL_CONSUMER_MAKE_PROGRAM}
                 --build-config $<CONFIG>
                 --build-options ${BITDISTILL_CONSUMER_OPTIONS}
                                 "-DBITDISTILL_SOURCE_DIR=${PROJECT_SOURCE_DIR}"
                 --test-command "${CMAKE_CTEST_COMMAND}" --output-on-failure)
set_tests_properties(consumer_add_subdirectory PROPERTIES
                     FIXTURES_REQUIRED bitdistill_consumer_clean
                     LABELS packaging)
