# iocp_warnings(<target>): the warning level every target of the project builds with.
# Warnings are errors on GCC/Clang/mingw; MSVC gets /W4 /permissive- and is kept clean
# by the same code, but is not made fatal so a newer MSVC cannot stop a reader's build.
function(iocp_warnings target)
    if(MSVC)
        target_compile_options(${target} PRIVATE /W4 /permissive- /utf-8)
        target_compile_definitions(${target} PRIVATE _CRT_SECURE_NO_WARNINGS)
    else()
        target_compile_options(${target} PRIVATE
            -Wall -Wextra -Wpedantic -Wshadow -Wconversion
            -Wnon-virtual-dtor -Wold-style-cast -Werror)
    endif()
    if(WIN32)
        # Lean windows.h; no min/max macros fighting std::min.
        target_compile_definitions(${target} PRIVATE WIN32_LEAN_AND_MEAN NOMINMAX _WIN32_WINNT=0x0601)
    endif()
endfunction()
