// cmd_rloo.c - `rlhfd rloo`: REINFORCE Leave-One-Out (Ahmadian et al. 2024).
// The trainer is shared with pg and GRPO and lives in cmd_grpo.c
// (pg_family_main); see its header comment.
#include "commands.h"

int pg_family_main(int argc, char** argv, int algo_id); // cmd_grpo.c; 2 = rloo

int cmd_rloo(int argc, char** argv) { return pg_family_main(argc, argv, 2); }
