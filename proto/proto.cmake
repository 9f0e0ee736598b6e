# The control plane (proto/): rlhfd.proto -> C with protoc-c at build time,
# plus the framing (wire.c) and the coordinator<->worker exchange
# (control.c), all compiled into rlhfcore so every target gets them.
# Included from the top CMakeLists.txt (not add_subdirectory): a custom
# command's outputs are only buildable by targets of the same directory.
pkg_check_modules(PROTOBUFC REQUIRED IMPORTED_TARGET libprotobuf-c)
find_program(PROTOC_C protoc-c REQUIRED)

set(RLHFD_PROTO_GEN ${CMAKE_BINARY_DIR}/gen)
set(RLHFD_PROTO_C ${RLHFD_PROTO_GEN}/proto/rlhfd.pb-c.c)
set(RLHFD_PROTO_H ${RLHFD_PROTO_GEN}/proto/rlhfd.pb-c.h)
# --proto_path at the source root: the outputs land in gen/proto/ and the
# generated .c includes "proto/rlhfd.pb-c.h", like our own headers.
add_custom_command(
  OUTPUT ${RLHFD_PROTO_C} ${RLHFD_PROTO_H}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${RLHFD_PROTO_GEN}
  COMMAND ${PROTOC_C} --proto_path=${CMAKE_SOURCE_DIR} --c_out=${RLHFD_PROTO_GEN}
          ${CMAKE_SOURCE_DIR}/proto/rlhfd.proto
  DEPENDS ${CMAKE_SOURCE_DIR}/proto/rlhfd.proto
  COMMENT "protoc-c proto/rlhfd.proto"
  VERBATIM)

target_sources(rlhfcore PRIVATE ${RLHFD_PROTO_C} ${RLHFD_PROTO_H}
  ${CMAKE_SOURCE_DIR}/proto/wire.c ${CMAKE_SOURCE_DIR}/proto/control.c)
target_include_directories(rlhfcore PUBLIC ${RLHFD_PROTO_GEN})
target_link_libraries(rlhfcore PUBLIC PkgConfig::PROTOBUFC)
