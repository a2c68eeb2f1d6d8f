# The portable fast route: infinityformer::openblas puts OpenBLAS behind Eigen's large
# products (EIGEN_USE_BLAS). Debian's OpenBLAS chooses its kernels for the CPU it runs on,
# so a program built with the compiler's default flags still gets vectorised products.
#
#   find_package(infinityformer CONFIG REQUIRED COMPONENTS openblas)   # installed
#   target_link_libraries(app PRIVATE infinityformer::infinityformer infinityformer::openblas)
#
# (As a subdirectory the target exists whenever OpenBLAS was found.) EIGEN_USE_BLAS changes
# how Eigen's products are compiled: every file of a program that includes Eigen must be
# built with it, or with none (link the target to every such target).
# Sets INFINITYFORMER_OPENBLAS_FOUND.
include_guard(GLOBAL)

block(SCOPE_FOR VARIABLES PROPAGATE INFINITYFORMER_OPENBLAS_FOUND)
    set(BLA_VENDOR OpenBLAS)
    find_package(BLAS QUIET)
    set(INFINITYFORMER_OPENBLAS_FOUND ${BLAS_FOUND})
    if(BLAS_FOUND AND NOT TARGET infinityformer::openblas)
        # GLOBAL, and the libraries by path: usable from any directory of the project.
        add_library(infinityformer::openblas INTERFACE IMPORTED GLOBAL)
        set_target_properties(infinityformer::openblas PROPERTIES
            INTERFACE_COMPILE_DEFINITIONS EIGEN_USE_BLAS
            INTERFACE_LINK_LIBRARIES "${BLAS_LIBRARIES}")
        if(BLAS_LINKER_FLAGS)
            set_property(TARGET infinityformer::openblas PROPERTY
                INTERFACE_LINK_OPTIONS "${BLAS_LINKER_FLAGS}")
        endif()
    endif()
endblock()
