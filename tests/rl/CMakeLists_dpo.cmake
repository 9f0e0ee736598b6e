# Tests of `rlhfd dpo` (coordinator/cmd_dpo.c, coordinator/dpo.h):
#   dpo_torch          dpo_dump runs the command's gradient path on a tiny GPT;
#                      dpo_torch.py checks sums, loss and every gradient vs PyTorch
#   dpo_torch_perturb  a corrupted reference sum must be caught
#   dpo_cli_*          `rlhfd dpo` end to end on a learnable synthetic preference
#                      set: accuracy and margin rise, determinism, errors
add_executable(dpo_dump ${CMAKE_CURRENT_LIST_DIR}/dpo_dump.c)
target_link_libraries(dpo_dump PRIVATE rlhftest)
add_test(NAME dpo_torch
  COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/dpo_torch.py --driver $<TARGET_FILE:dpo_dump>)
add_test(NAME dpo_torch_perturb
  COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/dpo_torch.py --driver $<TARGET_FILE:dpo_dump> --perturb)
set_tests_properties(dpo_torch dpo_torch_perturb PROPERTIES
  ENVIRONMENT "${RLHFD_TEST_ENV}" SKIP_RETURN_CODE 77 TIMEOUT 120 LABELS rl)
foreach(part train errors)
  add_test(NAME dpo_cli_${part} COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/dpo_cli.py ${part})
  set_tests_properties(dpo_cli_${part} PROPERTIES
    ENVIRONMENT "${RLHFD_TEST_ENV}" SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS rl)
endforeach()
