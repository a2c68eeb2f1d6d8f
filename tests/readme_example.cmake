# Checks that the first ```cpp block of README.md is byte-identical to examples/quickstart.cpp.
# With -DLANG=c++ the first ```c++ block is compared instead (the README's training loop).
#
#   cmake -DREADME=<path>/README.md -DEXAMPLE=<path>/examples/quickstart.cpp
#         [-DOUTPUT=<file to write the README's block to on a mismatch>]
#         -P readme_example.cmake
#
# The block is the text between the line "```cpp" and the next line starting with "```",
# including the newline that ends its last line; the file must equal it exactly.

cmake_minimum_required(VERSION 3.25)

foreach(_var IN ITEMS README EXAMPLE)
    if(NOT DEFINED ${_var})
        message(FATAL_ERROR "readme_example.cmake: pass -D${_var}=<path>")
    endif()
    if(NOT EXISTS "${${_var}}")
        message(FATAL_ERROR "readme_example.cmake: ${_var} file not found: ${${_var}}")
    endif()
endforeach()

file(READ "${README}" _readme)
file(READ "${EXAMPLE}" _example)

# Start of the first line that is exactly "```cpp".
if(NOT DEFINED LANG)
    set(LANG cpp)
endif()
set(_fence "```${LANG}\n")
string(LENGTH "${_fence}" _fence_length)
string(SUBSTRING "${_readme}" 0 ${_fence_length} _head)
if(_head STREQUAL _fence)
    set(_open 0)
else()
    string(FIND "${_readme}" "\n${_fence}" _open)
    if(_open EQUAL -1)
        message(FATAL_ERROR "README example check: ${README} has no ```${LANG} block; its first "
                            "```${LANG} block must be a copy of ${EXAMPLE}")
    endif()
    math(EXPR _open "${_open} + 1")
endif()
math(EXPR _begin "${_open} + ${_fence_length}")
string(SUBSTRING "${_readme}" ${_begin} -1 _rest)

# The closing fence: the next line that starts with ```.
string(SUBSTRING "${_rest}" 0 3 _rest_head)
if(_rest_head STREQUAL "```")
    set(_block "")
else()
    string(FIND "${_rest}" "\n```" _close)
    if(_close EQUAL -1)
        message(FATAL_ERROR "README example check: the first ```${LANG} block of ${README} is not "
                            "closed by a ``` line")
    endif()
    math(EXPR _length "${_close} + 1")
    string(SUBSTRING "${_rest}" 0 ${_length} _block)
endif()

if(_block STREQUAL _example)
    message(STATUS "README example check: the first ```${LANG} block of README.md equals "
                   "examples/quickstart.cpp")
    return()
endif()

# Mismatch: report the first line that differs (1-based, counted in the example file).
set(_a "${_block}")
set(_b "${_example}")
set(_line 1)
while(TRUE)
    string(FIND "${_a}" "\n" _na)
    string(FIND "${_b}" "\n" _nb)
    if(_na EQUAL -1)
        set(_la "${_a}")
    else()
        string(SUBSTRING "${_a}" 0 ${_na} _la)
    endif()
    if(_nb EQUAL -1)
        set(_lb "${_b}")
    else()
        string(SUBSTRING "${_b}" 0 ${_nb} _lb)
    endif()
    if(NOT _la STREQUAL _lb OR _na EQUAL -1 OR _nb EQUAL -1)
        break()
    endif()
    math(EXPR _sa "${_na} + 1")
    math(EXPR _sb "${_nb} + 1")
    string(SUBSTRING "${_a}" ${_sa} -1 _a)
    string(SUBSTRING "${_b}" ${_sb} -1 _b)
    math(EXPR _line "${_line} + 1")
endwhile()

set(_saved "")
if(DEFINED OUTPUT)
    file(WRITE "${OUTPUT}" "${_block}")
    set(_saved "\n  The README's block was written to ${OUTPUT}: diff ${OUTPUT} ${EXAMPLE}")
endif()
message(FATAL_ERROR
    "README example check: the first ```${LANG} block of ${README} differs from ${EXAMPLE}.\n"
    "  first difference at line ${_line} of the block:\n"
    "    README:   [${_la}]\n"
    "    example:  [${_lb}]\n"
    "  Copy examples/quickstart.cpp into the README's first ```${LANG} block (or the other way "
    "round) so that they are byte-identical.${_saved}")
