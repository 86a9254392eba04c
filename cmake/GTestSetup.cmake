# GoogleTest, without downloading anything:
#  1. an installed GoogleTest (find_package), e.g. Debian's libgtest-dev or vcpkg's;
#  2. GoogleTest sources already on the machine (Debian's 'googletest' package puts them
#     in /usr/src/googletest); the mingw-w64 build always takes this route, because a
#     Linux libgtest cannot link into a Windows executable;
#  3. neither: the tests are left out with a message saying how to get them.
# Sets IOCP_HAVE_GTEST.
set(IOCP_GTEST_SOURCE_DIR "/usr/src/googletest" CACHE PATH "GoogleTest sources to build when no installed GoogleTest fits")

set(IOCP_HAVE_GTEST OFF)
if(NOT CMAKE_CROSSCOMPILING)
    find_package(GTest QUIET)
    if(GTest_FOUND)
        set(IOCP_HAVE_GTEST ON)
        message(STATUS "GoogleTest: installed (${GTest_DIR}${GTEST_INCLUDE_DIRS})")
        return()
    endif()
endif()

if(EXISTS "${IOCP_GTEST_SOURCE_DIR}/CMakeLists.txt")
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    set(BUILD_GMOCK OFF CACHE BOOL "" FORCE)
    set(gtest_force_shared_crt ON CACHE BOOL "" FORCE)   # MSVC: match the default /MD runtime
    add_subdirectory("${IOCP_GTEST_SOURCE_DIR}" "${CMAKE_BINARY_DIR}/_googletest" EXCLUDE_FROM_ALL)
    if(NOT TARGET GTest::gtest)
        add_library(GTest::gtest ALIAS gtest)
        add_library(GTest::gtest_main ALIAS gtest_main)
    endif()
    set(IOCP_HAVE_GTEST ON)
    message(STATUS "GoogleTest: built from ${IOCP_GTEST_SOURCE_DIR}")
else()
    message(WARNING "GoogleTest not found: tests are not built. Install it (Debian: "
                    "apt-get install libgtest-dev googletest; Windows: vcpkg install gtest) "
                    "or point IOCP_GTEST_SOURCE_DIR at a googletest source tree.")
endif()
