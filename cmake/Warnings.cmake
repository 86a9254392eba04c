# iocp_warnings(<target>): the warning level every target of the project builds with.
#
# IOCP_WARNINGS_AS_ERRORS (default OFF) makes those warnings errors. Our presets and
# scripts/test.sh turn it on, for the compilers we pick and test with (GCC 12, clang 14,
# mingw-w64 GCC 12). A reader's plain `cmake -DCMAKE_BUILD_TYPE=Release` leaves it off,
# so a newer compiler's new warning, or a false one (GCC 12 at -O3 reports -Wrestrict
# inside std::string), never stops their build.
option(IOCP_WARNINGS_AS_ERRORS "Treat compiler warnings as errors (our presets and scripts/test.sh turn this on)" OFF)

function(iocp_warnings target)
    if(MSVC)
        target_compile_options(${target} PRIVATE /W4 /permissive- /utf-8)
        target_compile_definitions(${target} PRIVATE _CRT_SECURE_NO_WARNINGS)
        if(IOCP_WARNINGS_AS_ERRORS)
            target_compile_options(${target} PRIVATE /WX)
        endif()
    else()
        target_compile_options(${target} PRIVATE
            -Wall -Wextra -Wpedantic -Wshadow -Wconversion
            -Wnon-virtual-dtor -Wold-style-cast)
        if(IOCP_WARNINGS_AS_ERRORS)
            target_compile_options(${target} PRIVATE -Werror)
        endif()
    endif()
    if(WIN32)
        # Lean windows.h; no min/max macros fighting std::min.
        target_compile_definitions(${target} PRIVATE WIN32_LEAN_AND_MEAN NOMINMAX _WIN32_WINNT=0x0601)
    endif()
endfunction()
