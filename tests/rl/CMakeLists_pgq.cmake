# REINFORCE / GRPO / RLOO / Quark (coordinator/cmd_grpo.c, cmd_pg.c, cmd_rloo.c,
# cmd_quark.c) on a tiny GPT-2-vocab policy SFT'd on synthetic sentiment
# sentences, with the AFINN lexicon reward:
#   pgq_learn_ALGO    a short run raises the training and held-out reward
#   pgq_determinism   same config + seed -> same metrics (timing dropped)
#   pgq_quark_ctrl    Quark's control tokens: samples / training rows / bins
#   pgq_errors        bad configs -> one-line errors
foreach(algo pg grpo rloo quark)
  add_test(NAME pgq_learn_${algo} COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/pgq_test.py learn ${algo})
  set_tests_properties(pgq_learn_${algo} PROPERTIES
    ENVIRONMENT "${RLHFD_TEST_ENV}" SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS rl)
endforeach()
foreach(part determinism quark_ctrl errors)
  add_test(NAME pgq_${part} COMMAND ${RLHFD_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/pgq_test.py ${part})
  set_tests_properties(pgq_${part} PROPERTIES
    ENVIRONMENT "${RLHFD_TEST_ENV}" SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS rl)
endforeach()
