# cmake/FindCudnnFrontend.cmake — cuDNN (the library) plus cudnn-frontend (NVIDIA's header-only C++
# graph API on top of it).
#
#   find_package(CudnnFrontend)        # after find_package(CUDAToolkit)
#
# Defines
#   CudnnFrontend_FOUND              TRUE when both the headers and libcudnn were found
#   CudnnFrontend_INCLUDE_DIR        folder holding cudnn_frontend.h
#   CudnnFrontend_VERSION            e.g. 1.8.0 (from cudnn_frontend_version.h)
#   CUDNN_LIBRARY                    libcudnn.so
#   CudnnFrontend::CudnnFrontend     INTERFACE target: the frontend include folder (as SYSTEM, so
#                                    its headers' warnings stay out of ours) + libcudnn + CUDA::cudart
#
# Where the headers are looked for, in order:
#   1. $CUDNN_FRONTEND_ROOT/include (CMake variable or environment variable)
#   2. the system (/usr/include/cudnn_frontend.h: Debian/Ubuntu's libcudnn-frontend-dev)
#   3. third_party/cudnn-frontend/include (filled by scripts/get_cudnn_frontend.sh; git-ignored)
#   4. only with -DSUBLIMINAL_FETCH_CUDNN_FRONTEND=ON: FetchContent of the v1.8.0 release from
#      GitHub (needs network access; the machines this project runs on have none to GitHub)
# libcudnn and cudnn.h: $CUDNN_ROOT (CMake or environment), then the CUDA toolkit's folders
# (/usr/local/cuda/lib64/libcudnn.so here), then the system, then Python's nvidia-cudnn wheel.
include(FindPackageHandleStandardArgs)

option(SUBLIMINAL_FETCH_CUDNN_FRONTEND
       "Download cudnn-frontend v1.8.0 from GitHub when it is not installed (needs network)" OFF)

set(_cfe_roots)
foreach(_root "${CUDNN_FRONTEND_ROOT}" "$ENV{CUDNN_FRONTEND_ROOT}")
  if(_root)
    list(APPEND _cfe_roots "${_root}")
  endif()
endforeach()

if(_cfe_roots)
  # An explicit root wins and is the only place looked at: a wrong root should fail, not be skipped.
  find_path(CudnnFrontend_INCLUDE_DIR cudnn_frontend.h
            PATHS ${_cfe_roots} PATH_SUFFIXES include NO_DEFAULT_PATH)
else()
  find_path(CudnnFrontend_INCLUDE_DIR cudnn_frontend.h
            PATHS /usr/include "${PROJECT_SOURCE_DIR}/third_party/cudnn-frontend/include")
endif()

if(NOT CudnnFrontend_INCLUDE_DIR AND SUBLIMINAL_FETCH_CUDNN_FRONTEND)
  include(FetchContent)
  message(STATUS "cudnn-frontend: fetching v1.8.0 from GitHub")
  # Headers only: SOURCE_SUBDIR names a folder without a CMakeLists.txt, so MakeAvailable just
  # downloads and does not configure the frontend's own samples and tests.
  FetchContent_Declare(cudnn_frontend_src
    GIT_REPOSITORY https://github.com/NVIDIA/cudnn-frontend.git
    GIT_TAG v1.8.0
    GIT_SHALLOW TRUE
    SOURCE_SUBDIR include)
  FetchContent_MakeAvailable(cudnn_frontend_src)
  find_path(CudnnFrontend_INCLUDE_DIR cudnn_frontend.h
            PATHS "${cudnn_frontend_src_SOURCE_DIR}/include" NO_DEFAULT_PATH)
endif()

set(_cudnn_hints)
foreach(_root "${CUDNN_ROOT}" "$ENV{CUDNN_ROOT}")
  if(_root)
    list(APPEND _cudnn_hints "${_root}")
  endif()
endforeach()
if(CUDAToolkit_LIBRARY_DIR)
  list(APPEND _cudnn_hints "${CUDAToolkit_LIBRARY_DIR}")
endif()
if(CUDAToolkit_LIBRARY_ROOT)
  list(APPEND _cudnn_hints "${CUDAToolkit_LIBRARY_ROOT}")
endif()
# libcudnn.so.9 too: pip's nvidia-cudnn wheels ship no unversioned libcudnn.so.
find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR
             HINTS ${_cudnn_hints} PATH_SUFFIXES lib64 lib lib/x64)
# cudnn.h (the C API the frontend includes) normally sits beside the CUDA headers.
find_path(CUDNN_INCLUDE_DIR cudnn.h
          HINTS ${_cudnn_hints} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)

# Last resort: the cuDNN inside Python's site-packages (the nvidia-cudnn-cu* wheel PyTorch uses),
# which is where it lives on some GPU machines. find_* search again while a result is NOTFOUND.
if(NOT CUDNN_LIBRARY OR NOT CUDNN_INCLUDE_DIR)
  find_program(_cfe_python NAMES python3 python)
  mark_as_advanced(_cfe_python)
  if(_cfe_python)
    execute_process(
      COMMAND "${_cfe_python}" -c "import nvidia.cudnn as m; print(list(m.__path__)[0])"
      OUTPUT_VARIABLE _cfe_pip_cudnn OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
      RESULT_VARIABLE _cfe_pip_rc)
    if(_cfe_pip_rc EQUAL 0 AND IS_DIRECTORY "${_cfe_pip_cudnn}")
      find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR
                   PATHS "${_cfe_pip_cudnn}" PATH_SUFFIXES lib NO_DEFAULT_PATH)
      find_path(CUDNN_INCLUDE_DIR cudnn.h
                PATHS "${_cfe_pip_cudnn}" PATH_SUFFIXES include NO_DEFAULT_PATH)
    endif()
  endif()
endif()

if(CudnnFrontend_INCLUDE_DIR AND EXISTS "${CudnnFrontend_INCLUDE_DIR}/cudnn_frontend_version.h")
  file(STRINGS "${CudnnFrontend_INCLUDE_DIR}/cudnn_frontend_version.h" _cfe_version_lines
       REGEX "#define CUDNN_FRONTEND_(MAJOR|MINOR|PATCH)_VERSION")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX REPLACE ".*CUDNN_FRONTEND_${_part}_VERSION ([0-9]+).*" "\\1" _cfe_${_part}
           "${_cfe_version_lines}")
  endforeach()
  set(CudnnFrontend_VERSION "${_cfe_MAJOR}.${_cfe_MINOR}.${_cfe_PATCH}")
endif()

find_package_handle_standard_args(CudnnFrontend
  REQUIRED_VARS CudnnFrontend_INCLUDE_DIR CUDNN_LIBRARY CUDNN_INCLUDE_DIR
  VERSION_VAR CudnnFrontend_VERSION)

if(CudnnFrontend_FOUND AND NOT TARGET CudnnFrontend::CudnnFrontend)
  add_library(CudnnFrontend::CudnnFrontend INTERFACE IMPORTED)
  # Imported targets' include folders are SYSTEM includes: the frontend's own warnings stay quiet.
  set_target_properties(CudnnFrontend::CudnnFrontend PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${CudnnFrontend_INCLUDE_DIR};${CUDNN_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${CUDNN_LIBRARY}")
  if(TARGET CUDA::cudart)
    set_property(TARGET CudnnFrontend::CudnnFrontend APPEND PROPERTY
                 INTERFACE_LINK_LIBRARIES CUDA::cudart)
  endif()
endif()

mark_as_advanced(CudnnFrontend_INCLUDE_DIR CUDNN_LIBRARY CUDNN_INCLUDE_DIR)
