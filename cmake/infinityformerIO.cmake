# The optional interchange headers (<infinityformer/io/safetensors.hpp>, the safetensors
# format; <infinityformer/io/weights.hpp>, a module's weights in it;
# <infinityformer/io/state.hpp>, a stream's memory state) need
# nlohmann/json (Debian: nlohmann-json3-dev) and zlib (zlib1g-dev); the core needs neither.
#
#   find_package(infinityformer CONFIG REQUIRED COMPONENTS io)   # installed
#   target_link_libraries(app PRIVATE infinityformer::infinityformer infinityformer::io)
#
# (As a subdirectory the target exists whenever both were found.)
# Sets INFINITYFORMER_IO_FOUND.
include_guard(GLOBAL)

block(SCOPE_FOR VARIABLES PROPAGATE INFINITYFORMER_IO_FOUND)
    find_package(nlohmann_json 3.2 QUIET)
    find_package(ZLIB QUIET)
    if(nlohmann_json_FOUND AND ZLIB_FOUND)
        set(INFINITYFORMER_IO_FOUND TRUE)
    else()
        set(INFINITYFORMER_IO_FOUND FALSE)
    endif()
    if(INFINITYFORMER_IO_FOUND AND NOT TARGET infinityformer::io)
        add_library(infinityformer::io INTERFACE IMPORTED GLOBAL)
        set_target_properties(infinityformer::io PROPERTIES
            INTERFACE_LINK_LIBRARIES "nlohmann_json::nlohmann_json;ZLIB::ZLIB")
    endif()
endblock()
