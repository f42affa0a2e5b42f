# FindLibunwind: the nongnu libunwind (Debian: libunwind-dev), for the
# monitor's backtraces taken in a signal handler. Defines Libunwind::libunwind.
find_path(LIBUNWIND_INCLUDE_DIR NAMES libunwind.h PATH_SUFFIXES ${CMAKE_LIBRARY_ARCHITECTURE})
find_library(LIBUNWIND_LIBRARY NAMES unwind)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Libunwind REQUIRED_VARS LIBUNWIND_LIBRARY LIBUNWIND_INCLUDE_DIR)
if(Libunwind_FOUND AND NOT TARGET Libunwind::libunwind)
  add_library(Libunwind::libunwind UNKNOWN IMPORTED)
  set_target_properties(Libunwind::libunwind PROPERTIES
    IMPORTED_LOCATION "${LIBUNWIND_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${LIBUNWIND_INCLUDE_DIR}")
endif()
mark_as_advanced(LIBUNWIND_INCLUDE_DIR LIBUNWIND_LIBRARY)
