# Inference tests that load the SentencePiece model of stories260K link libsentencepiece
# (Debian: libsentencepiece-dev); the library target itself does not need it.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(BITDISTILL_INFER_SENTENCEPIECE QUIET IMPORTED_TARGET sentencepiece)
endif()

if(TARGET PkgConfig::BITDISTILL_INFER_SENTENCEPIECE)
  bitdistill_add_test(test_llama2c
    SOURCES test_llama2c.cpp
    LIBRARIES PkgConfig::BITDISTILL_INFER_SENTENCEPIECE
    LABELS infer)
else()
  message(WARNING "SentencePiece not found (install libsentencepiece-dev): "
                  "test_llama2c is not built")
endif()
list(APPEND BITDISTILL_CUSTOM_TESTS test_llama2c)
