# PyTorch reference of worker/rl_math.c: rlmath_dump runs every function on
# random inputs and dumps .npy files; rlmath_torch.py recomputes them in
# float64 PyTorch (gradients by autograd) and compares. The _perturb test
# corrupts two outputs and passes only if exactly those are caught.
add_executable(rlmath_dump ${CMAKE_CURRENT_LIST_DIR}/rlmath_dump.c)
target_link_libraries(rlmath_dump PRIVATE rlhftest)

add_test(NAME rlmath_torch
  COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/rlmath_torch.py --driver $<TARGET_FILE:rlmath_dump>)
add_test(NAME rlmath_torch_perturb
  COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/rlmath_torch.py --driver $<TARGET_FILE:rlmath_dump> --perturb)
set_tests_properties(rlmath_torch rlmath_torch_perturb PROPERTIES
  ENVIRONMENT "${RLHFD_TEST_ENV}" SKIP_RETURN_CODE 77 TIMEOUT 120 LABELS rl)
