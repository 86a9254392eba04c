# Writes OUT_DIR/chNN.diff = `diff -ruN <previous chapter> <chapter NN>` for every
# chapter after the first. Run by the chapter_diffs target (see CMakeLists.txt).
find_program(DIFF diff REQUIRED)
file(MAKE_DIRECTORY ${OUT_DIR})
string(REPLACE "," ";" CHAPTERS "${CHAPTERS}")
set(previous "")
foreach(chapter IN LISTS CHAPTERS)
    if(previous)
        string(SUBSTRING ${chapter} 0 2 num)
        # diff exits 1 when the folders differ: that is the normal case here.
        execute_process(
            COMMAND ${DIFF} -ruN ${previous} ${chapter}
            WORKING_DIRECTORY ${CHAPTERS_DIR}
            OUTPUT_FILE ${OUT_DIR}/ch${num}.diff
            RESULT_VARIABLE rc)
        if(rc GREATER 1)
            message(FATAL_ERROR "diff ${previous} ${chapter} failed (${rc})")
        endif()
    endif()
    set(previous ${chapter})
endforeach()
