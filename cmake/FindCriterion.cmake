# FindCriterion: the Criterion test framework (Debian: libcriterion-dev).
# Defines Criterion::criterion.
find_path(CRITERION_INCLUDE_DIR NAMES criterion/criterion.h)
find_library(CRITERION_LIBRARY NAMES criterion)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Criterion REQUIRED_VARS CRITERION_LIBRARY CRITERION_INCLUDE_DIR)
if(Criterion_FOUND AND NOT TARGET Criterion::criterion)
  add_library(Criterion::criterion UNKNOWN IMPORTED)
  set_target_properties(Criterion::criterion PROPERTIES
    IMPORTED_LOCATION "${CRITERION_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CRITERION_INCLUDE_DIR}")
endif()
mark_as_advanced(CRITERION_INCLUDE_DIR CRITERION_LIBRARY)
