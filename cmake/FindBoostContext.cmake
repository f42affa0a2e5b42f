# FindBoostContext: only the fcontext assembly of boost.context
# (Debian: libboost-context-dev); no boost headers, no C++.
# Defines BoostContext::context.
find_library(BOOST_CONTEXT_LIBRARY NAMES boost_context)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(BoostContext REQUIRED_VARS BOOST_CONTEXT_LIBRARY)
if(BoostContext_FOUND AND NOT TARGET BoostContext::context)
  add_library(BoostContext::context UNKNOWN IMPORTED)
  set_target_properties(BoostContext::context PROPERTIES IMPORTED_LOCATION "${BOOST_CONTEXT_LIBRARY}")
endif()
mark_as_advanced(BOOST_CONTEXT_LIBRARY)
