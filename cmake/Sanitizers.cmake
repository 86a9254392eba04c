# IOCP_SANITIZE=address -> AddressSanitizer + UndefinedBehaviorSanitizer
# IOCP_SANITIZE=thread  -> ThreadSanitizer
# Applied to every target in the tree, tests included, so a sanitizer sees both the
# server and the client side of every socket a test opens.
if(IOCP_SANITIZE STREQUAL "")
    return()
endif()
if(MSVC OR MINGW)
    message(FATAL_ERROR "IOCP_SANITIZE is for the native Linux build (ASan does not run under Wine)")
endif()
if(IOCP_SANITIZE STREQUAL "address")
    set(_flags -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
elseif(IOCP_SANITIZE STREQUAL "thread")
    set(_flags -fsanitize=thread -fno-omit-frame-pointer)
else()
    message(FATAL_ERROR "IOCP_SANITIZE must be '', 'address' or 'thread', not '${IOCP_SANITIZE}'")
endif()
add_compile_options(${_flags})
add_link_options(${_flags})
message(STATUS "Sanitizers: ${_flags}")
