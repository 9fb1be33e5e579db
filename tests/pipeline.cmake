# Pipeline tests: the tokenizer test and the end-to-end stage tests link SentencePiece
# (Debian: libsentencepiece-dev), which the library target itself does not need.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(BITDISTILL_SENTENCEPIECE QUIET IMPORTED_TARGET sentencepiece)
endif()
find_library(BITDISTILL_SENTENCEPIECE_TRAIN_LIBRARY sentencepiece_train)

if(TARGET PkgConfig::BITDISTILL_SENTENCEPIECE AND BITDISTILL_SENTENCEPIECE_TRAIN_LIBRARY)
  bitdistill_add_test(test_pipeline_tokenizer
    SOURCES test_pipeline_tokenizer.cpp
    LIBRARIES PkgConfig::BITDISTILL_SENTENCEPIECE ${BITDISTILL_SENTENCEPIECE_TRAIN_LIBRARY}
    LABELS pipeline)
else()
  message(WARNING "SentencePiece not found (install libsentencepiece-dev): "
                  "test_pipeline_tokenizer is not built")
endif()
list(APPEND BITDISTILL_CUSTOM_TESTS test_pipeline_tokenizer)
