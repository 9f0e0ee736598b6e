// commands.h - the subcommands of `rlhfd`. Each lives in coordinator/cmd_<name>.c
// and returns the process exit code (0 ok, 1 runtime error, 2 bad arguments).
#pragma once

int cmd_tokenize(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_pretrain(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_sft(int argc, char** argv);
int cmd_label(int argc, char** argv);
int cmd_rm(int argc, char** argv);
int cmd_score(int argc, char** argv);
int cmd_demo(int argc, char** argv);
int cmd_ppo(int argc, char** argv);
int cmd_pg(int argc, char** argv);
int cmd_grpo(int argc, char** argv);
int cmd_rloo(int argc, char** argv);
int cmd_quark(int argc, char** argv);
int cmd_dpo(int argc, char** argv);
int cmd_nlpo(int argc, char** argv);
int cmd_ilql(int argc, char** argv);
int cmd_evaluate(int argc, char** argv);
