# PPO (worker/rollout.c, worker/value_head.c, coordinator/cmd_ppo.c, coordinator/rl_common.c):
#   ppo_heads      C: LM-head backward of -w/sum(w) == gpt_backward exactly; rollout_pack and
#                  padded-batch log-probs; value-head + trunk gradients vs finite differences
#   ppo_learn      rlhfd ppo on a tiny model with a lexicon reward raises the reward
#   ppo_determinism two identical runs -> identical metrics.jsonl (timing fields dropped)
#   ppo_errors     no --model, bad reward spec, bad ppo.value -> one-line errors, exit != 0
add_executable(ppo_heads_test ${CMAKE_CURRENT_LIST_DIR}/ppo_heads_test.c)
target_link_libraries(ppo_heads_test PRIVATE rlhfcore)
add_test(NAME ppo_heads COMMAND ppo_heads_test)
set_tests_properties(ppo_heads PROPERTIES ENVIRONMENT "${RLHFD_TEST_ENV}" TIMEOUT 60 LABELS rl)

foreach(part learn determinism errors)
  add_test(NAME ppo_${part} COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/ppo_cli.py ${part})
  set_tests_properties(ppo_${part} PROPERTIES
    ENVIRONMENT "${RLHFD_TEST_ENV}" SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS rl)
endforeach()
