// cmd_pg.c - `rlhfd pg`: REINFORCE with a baseline against a classifier or
// reward model (Peng et al. 2020). The trainer is shared with GRPO and RLOO
// and lives in cmd_grpo.c (pg_family_main); see its header comment.
#include "commands.h"

int pg_family_main(int argc, char** argv, int algo_id); // cmd_grpo.c; 0 = pg

int cmd_pg(int argc, char** argv) { return pg_family_main(argc, argv, 0); }
