// config.c - the key registry, INI loading (libinih), typed getters.
#include "config.h"
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <strings.h>
#include <ini.h>
#include "check.h"

#define NOLIM 1e300 // "no bound" for min/max

// ----------------------------------------------------------------------------
// The registry. One line per key: key, type, default, min, max, doc.
// min/max are ignored for STR and BOOL.

static const ConfigKey CONFIG_KEYS[] = {
    // model shape (ignored where model.init gives a model: taken from it)
    {"model.layers", CONFIG_INT, "2", 1, 1024, "number of transformer blocks (L)"},
    {"model.heads", CONFIG_INT, "2", 1, 1024, "attention heads (NH); must divide model.embd"},
    {"model.embd", CONFIG_INT, "64", 1, 65536, "channels (C)"},
    {"model.vocab", CONFIG_INT, "50257", 1, 65536, "vocabulary size (V); 50257 = GPT-2 BPE"},
    {"model.ctx", CONFIG_INT, "64", 1, 1 << 20, "context length (max sequence length)"},
    {"model.init", CONFIG_STR, "", 0, 0, "model to start from (checkpoint dir, run dir, HF dir, llm.c .bin); empty = random init"},
    // optimisation
    {"train.batch", CONFIG_INT, "4", 1, 1 << 20, "sequences per step (B)"},
    {"train.seq", CONFIG_INT, "0", 0, 1 << 20, "tokens per sequence (T); 0 = model.ctx"},
    {"train.steps", CONFIG_INT, "100", 1, INT_MAX, "optimizer steps"},
    {"train.lr", CONFIG_FLOAT, "6e-4", 0, 10, "peak learning rate (after warmup)"},
    {"train.min_lr", CONFIG_FLOAT, "6e-5", 0, 10, "final learning rate of the cosine decay"},
    {"train.warmup", CONFIG_INT, "10", 0, INT_MAX, "linear warmup steps"},
    {"train.weight_decay", CONFIG_FLOAT, "0.1", 0, 10, "AdamW decoupled weight decay (2-D weights only)"},
    {"train.beta1", CONFIG_FLOAT, "0.9", 0, 0.999999, "AdamW beta1"},
    {"train.beta2", CONFIG_FLOAT, "0.95", 0, 0.99999999, "AdamW beta2"},
    {"train.eps", CONFIG_FLOAT, "1e-8", 1e-30, 1, "AdamW epsilon"},
    {"train.grad_clip", CONFIG_FLOAT, "1.0", 0, NOLIM, "max global gradient norm; 0 = no clipping"},
    {"train.seed", CONFIG_INT, "1337", 0, INT_MAX, "seed of the random init and the data order"},
    {"train.eval_every", CONFIG_INT, "50", 0, INT_MAX, "val loss every N steps (and at the end); 0 = only at the end"},
    {"train.eval_batches", CONFIG_INT, "8", 1, INT_MAX, "batches of data.val per evaluation"},
    {"train.checkpoint_every", CONFIG_INT, "0", 0, INT_MAX, "checkpoint every N steps (and at the end); 0 = only at the end"},
    {"train.keep_checkpoints", CONFIG_INT, "3", 0, INT_MAX, "keep the last K checkpoints; 0 = keep all"},
    {"train.log_every", CONFIG_INT, "10", 1, INT_MAX, "progress line on stderr every N steps"},
    {"train.threads", CONFIG_INT, "0", 0, 4096, "CPU threads (OpenMP + BLAS); 0 = default"},
    // data
    {"data.train", CONFIG_STR, "data/dl/fortunes.bin", 0, 0, "training token shard(s): comma-separated paths or globs"},
    {"data.val", CONFIG_STR, "", 0, 0, "validation token shard(s); empty = no val loss"},
    // supervised fine-tuning (rlhfd sft)
    {"sft.train", CONFIG_STR, "", 0, 0, "SFT demonstrations, JSONL {\"prompt\", \"response\"} per line"},
    {"sft.val", CONFIG_STR, "", 0, 0, "held-out demonstrations (JSONL); empty = no val loss"},
    {"sft.epochs", CONFIG_FLOAT, "0", 0, 1e6, "passes over sft.train (sets the steps; may be fractional); 0 = train.steps"},
    // reward model (rlhfd rm)
    {"rm.train", CONFIG_STR, "", 0, 0, "rankings JSONL {\"prompt\", \"responses\", \"ranking\"} or pairs {\"prompt\", \"chosen\", \"rejected\"}"},
    {"rm.val", CONFIG_STR, "", 0, 0, "held-out rankings/pairs (JSONL); empty = hold out rm.val_fraction of rm.train"},
    {"rm.val_fraction", CONFIG_FLOAT, "0.1", 0, 0.9, "share of rm.train held out for validation when rm.val is empty"},
    {"rm.epochs", CONFIG_FLOAT, "0", 0, 1e6, "passes over the training rankings (sets the steps; may be fractional); 0 = train.steps"},
    {"rm.norm_samples", CONFIG_STR, "", 0, 0, "JSONL {\"prompt\", \"response\"} SFT samples whose mean raw reward becomes the offset; empty = responses of rm.train"},
    {"rm.norm_max", CONFIG_INT, "1000", 0, INT_MAX, "at most this many samples for the offset; 0 = all"},
    // RL fine-tuning, shared by every algorithm (rlhfd ppo, pg, grpo, rloo, quark, dpo)
    {"rl.prompts", CONFIG_STR, "data/dl/reviews_prompts_train.jsonl", 0, 0, "training prompts, JSONL {\"prompt\"} per line"},
    {"rl.val_prompts", CONFIG_STR, "data/dl/reviews_prompts_val.jsonl", 0, 0, "held-out prompts for the evaluations (JSONL); empty = none"},
    {"rl.reward", CONFIG_STR, "", 0, 0, "reward trained on (worker/rewards.h spec: rm:PATH, lexicon:FILE, command:PROG, 0.7*A+0.3*B)"},
    {"rl.gold", CONFIG_STR, "lexicon:data/dl/sentiment/languages/en/labels.json", 0, 0, "gold scorer, logged only (never trained on); empty = none"},
    {"rl.iterations", CONFIG_INT, "20", 1, INT_MAX, "RL iterations (rollout + update)"},
    {"rl.batch", CONFIG_INT, "16", 1, 1 << 20, "prompts per iteration"},
    {"rl.max_new_tokens", CONFIG_INT, "24", 1, 1 << 20, "new tokens per response at most (eot included)"},
    {"rl.temperature", CONFIG_FLOAT, "1.0", 0, 100, "sampling temperature of the rollouts (1 = the policy itself)"},
    {"rl.top_k", CONFIG_INT, "0", 0, 1 << 20, "top-k of the rollouts; 0 = off"},
    {"rl.kl_coef", CONFIG_FLOAT, "0.05", 0, NOLIM, "KL penalty coefficient beta (initial value if adaptive)"},
    {"rl.kl_estimator", CONFIG_INT, "1", 1, 3, "per-token KL estimator: 1 = logp - logp_ref, 3 = exp(r)-1-r (r = ref - logp)"},
    {"rl.kl_adaptive", CONFIG_BOOL, "false", 0, 0, "adaptive KL controller (Ziegler et al. 2019) instead of a fixed beta"},
    {"rl.kl_target", CONFIG_FLOAT, "6.0", 0, NOLIM, "adaptive KL controller: target KL (nats per sequence)"},
    {"rl.kl_horizon", CONFIG_FLOAT, "10000", 1, NOLIM, "adaptive KL controller: horizon (sequences)"},
    {"rl.eval_every", CONFIG_INT, "0", 0, INT_MAX, "held-out evaluation every N iterations (and at the end); 0 = only at the end"},
    {"rl.eval_prompts", CONFIG_INT, "64", 0, INT_MAX, "held-out prompts per evaluation (first N of rl.val_prompts); 0 = all"},
    // PPO (rlhfd ppo)
    {"ppo.value", CONFIG_STR, "policy", 0, 0, "value head on the policy trunk (policy, trlx) or a critic GPT initialised from the RM (critic, InstructGPT)"},
    {"ppo.critic", CONFIG_STR, "", 0, 0, "reward model to initialise the critic from (ppo.value=critic); empty = the rm: term of rl.reward"},
    {"ppo.gamma", CONFIG_FLOAT, "1.0", 0, 1, "GAE discount"},
    {"ppo.lam", CONFIG_FLOAT, "0.95", 0, 1, "GAE lambda"},
    {"ppo.epochs", CONFIG_INT, "4", 1, 1000, "passes over each iteration's rollouts"},
    {"ppo.minibatch", CONFIG_INT, "8", 1, 1 << 20, "sequences per PPO minibatch"},
    {"ppo.clip", CONFIG_FLOAT, "0.2", 0, NOLIM, "policy ratio clip range"},
    {"ppo.vf_clip", CONFIG_FLOAT, "0.2", 0, NOLIM, "value clip range"},
    {"ppo.vf_coef", CONFIG_FLOAT, "1.0", 0, NOLIM, "value loss coefficient (ppo.value=policy)"},
    {"ppo.target_kl", CONFIG_FLOAT, "0", 0, NOLIM, "stop an iteration's epochs when the mean approx-KL of a minibatch exceeds this; 0 = off"},
    {"ppo.whiten", CONFIG_BOOL, "true", 0, 0, "whiten the advantages over each iteration's response tokens"},
    {"ppo.critic_lr", CONFIG_FLOAT, "0", 0, 10, "learning rate of the critic and the value head; 0 = train.lr"},
    // DPO (rlhfd dpo): offline preference optimisation (Rafailov et al. 2023)
    {"dpo.train", CONFIG_STR, "", 0, 0, "training preferences: JSONL rankings or {\"prompt\", \"chosen\", \"rejected\"} pairs"},
    {"dpo.val", CONFIG_STR, "", 0, 0, "held-out preferences (same formats) for val loss/accuracy; empty = none"},
    {"dpo.beta", CONFIG_FLOAT, "0.1", 1e-6, NOLIM, "DPO beta: strength of the implicit KL to the reference"},
    {"dpo.pairs", CONFIG_STR, "best_worst", 0, 0, "pairs from a ranking of k: best_worst (1 pair) or all (k(k-1)/2 pairs)"},
    // NLPO (rlhfd nlpo): PPO in the top-p action space of a masking policy (RL4LMs)
    {"nlpo.top_p", CONFIG_FLOAT, "0.9", 1e-6, 1, "NLPO: the masking policy keeps its top-p tokens at each step (1 = no mask: plain PPO)"},
    {"nlpo.mask_refresh", CONFIG_INT, "5", 1, INT_MAX, "NLPO: copy the policy into the masking policy every N iterations"},
    // ILQL (rlhfd ilql): offline implicit Q-learning on scored samples (Snell et al. 2022, trlx)
    {"ilql.train", CONFIG_STR, "", 0, 0, "ILQL data: JSONL {\"prompt\", \"response\", \"reward\"} (no reward: scored with rl.reward) or rankings (every response scored with rl.reward)"},
    {"ilql.gamma", CONFIG_FLOAT, "0.99", 0, 1, "ILQL: discount of the Bellman target Q(s,a) <- r + gamma V(s')"},
    {"ilql.tau", CONFIG_FLOAT, "0.7", 0.5, 0.999999, "ILQL: expectile of the V regression (0.5 = the mean of Q; closer to 1 = its max)"},
    {"ilql.cql_weight", CONFIG_FLOAT, "0.1", 0, NOLIM, "ILQL: weight of the CQL term (cross-entropy of the Q logits vs the action taken)"},
    {"ilql.awac_weight", CONFIG_FLOAT, "0.1", 0, NOLIM, "ILQL: weight of the LM (AWAC) loss on the data's responses (trlx: 1; lower leaves the trunk room to learn the Q features)"},
    {"ilql.alpha", CONFIG_FLOAT, "0.1", 0, 1, "ILQL: Polyak rate of the target Q heads per step (target <- alpha*Q + (1-alpha)*target)"},
    {"ilql.beta", CONFIG_FLOAT, "1.0", 0, NOLIM, "ILQL: decoding samples from logits + beta*(Q - V) (target Q heads; 0 = the LM alone)"},
    {"ilql.trunk_grad", CONFIG_FLOAT, "1.0", 0, 1, "ILQL: scale of the Q/V heads' gradient into the trunk (1 = trlx: shared trunk; 0 = heads on the trunk's features, the trunk trained by the LM loss only)"},
    {"ilql.head_lr", CONFIG_FLOAT, "0", 0, 10, "ILQL: learning rate of the Q and V heads (same schedule as train.lr); 0 = train.lr"},
    {"ilql.init_std", CONFIG_FLOAT, "0.05", 0, 10, "ILQL: std of the random init of the Q heads' weights (biases and the V head start at 0)"},
    // policy gradient (rlhfd pg), GRPO / RLOO (rlhfd grpo, rlhfd rloo), Quark (rlhfd quark)
    {"pg.baseline_decay", CONFIG_FLOAT, "0.9", 0, 0.999999, "REINFORCE baseline: moving average of the batch-mean reward with this decay; 0 = the batch mean"},
    {"pg.epochs", CONFIG_INT, "1", 1, 1000, "REINFORCE gradient steps on each iteration's samples"},
    {"grpo.group", CONFIG_INT, "4", 1, 1 << 16, "GRPO/RLOO: samples per prompt (G)"},
    {"grpo.scale_std", CONFIG_BOOL, "true", 0, 0, "GRPO: divide the group-centred reward by the group std (false: r - mean only)"},
    {"grpo.epochs", CONFIG_INT, "1", 1, 1000, "GRPO/RLOO: gradient steps on each batch (1 = plain policy gradient)"},
    {"grpo.clip", CONFIG_FLOAT, "0.2", 0, NOLIM, "GRPO/RLOO: policy ratio clip range (matters when grpo.epochs > 1)"},
    {"quark.bins", CONFIG_INT, "5", 2, 256, "Quark: reward quantiles K (control tokens = the K ids just below <|endoftext|>)"},
    {"quark.kl_coef", CONFIG_FLOAT, "0.05", 0, NOLIM, "Quark: weight of the per-token KL (k3 on the pool samples) to the reference"},
    {"quark.entropy_coef", CONFIG_FLOAT, "0", 0, NOLIM, "Quark: entropy bonus weight (sampled-token estimate)"},
    {"quark.steps", CONFIG_INT, "4", 1, INT_MAX, "Quark: gradient steps on the pool per iteration (train.batch pool rows each)"},
    {"quark.log_rows", CONFIG_BOOL, "false", 0, 0, "Quark: write every training row's tokens and bin to RUN_DIR/quark_rows.jsonl (tests)"},
    // outputs
    {"run.dir", CONFIG_STR, "runs/pretrain", 0, 0, "run directory: metrics.jsonl, ckpt-NNNNNNNN/"},
    {"run.device", CONFIG_STR, "cpu", 0, 0, "compute backend: cpu (OpenBLAS + OpenMP) or cuda (this rank's GPU; one process for now)"},
    {"run.precision", CONFIG_STR, "fp32", 0, 0, "matmul precision on cuda: fp32 (exact) or bf16 (bf16 inputs, fp32 accumulate and master weights); cpu is always fp32"},
    {"status.socket", CONFIG_STR, "", 0, 0, "status socket path (HTTP on a Unix socket, mode 0600); empty = RUN_DIR/status.sock; none = no socket"},
    {"status.listen", CONFIG_STR, "", 0, 0, "also serve status over TCP at HOST:PORT (loopback unless status.token is set); empty = no TCP"},
    {"status.token", CONFIG_STR, "", 0, 0, "bearer token for the TCP listener (control actions over TCP always need it)"},
    {"parallel.tp", CONFIG_INT, "1", 1, 4096, "tensor-parallel ranks per model replica (Megatron); dp = world size / tp"},
    {"parallel.zero1", CONFIG_BOOL, "false", 0, 0, "ZeRO-1: shard the AdamW moments over the data-parallel ranks"},
    {"parallel.timeout", CONFIG_FLOAT, "300", 0, 1e9, "seconds a collective may wait for the other ranks before the run aborts naming the phase; 0 = forever"},
};
#define NUM_CONFIG_KEYS ((int)(sizeof CONFIG_KEYS / sizeof CONFIG_KEYS[0]))

// ----------------------------------------------------------------------------

typedef struct {
    long long i;  // INT, BOOL
    double f;     // FLOAT
    char* s;      // STR (owned)
    char* origin; // owned; "default", "file.ini:7", "--set"
    int is_set;
} ConfigValue;

struct Config {
    ConfigValue values[NUM_CONFIG_KEYS];
};

static int key_index(const char* key) {
    for (int i = 0; i < NUM_CONFIG_KEYS; i++)
        if (!strcmp(CONFIG_KEYS[i].key, key)) return i;
    return -1;
}

static char* dup_string(const char* s) {
    size_t n = strlen(s) + 1;
    char* d = mallocCheck(n);
    memcpy(d, s, n);
    return d;
}

// ---- nearest key (for "did you mean")

static int levenshtein(const char* a, const char* b) {
    size_t na = strlen(a), nb = strlen(b);
    int* prev = mallocCheck((nb + 1) * sizeof(int));
    int* cur = mallocCheck((nb + 1) * sizeof(int));
    for (size_t j = 0; j <= nb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        int* t = prev; prev = cur; cur = t;
    }
    int d = prev[nb];
    free(prev);
    free(cur);
    return d;
}

// "learning_rate" -> "lr": people spell out what the registry abbreviates.
static void initials(const char* name, char* out, size_t cap) {
    size_t n = 0;
    for (const char* p = name; *p && n + 1 < cap; p++)
        if (p == name || p[-1] == '_' || p[-1] == '-') out[n++] = *p;
    out[n] = '\0';
}

const char* config_nearest_key(const char* key) {
    const char* dot = strchr(key, '.');
    const char* name = dot ? dot + 1 : key;
    size_t sec_len = dot ? (size_t)(dot - key) : 0;
    char abbrev[64];
    initials(name, abbrev, sizeof abbrev);
    int best = -1, best_score = INT_MAX;
    for (int i = 0; i < NUM_CONFIG_KEYS; i++) {
        const char* k = CONFIG_KEYS[i].key;
        const char* kname = strchr(k, '.') + 1;
        int same_section = dot && (size_t)(kname - 1 - k) == sec_len && !strncmp(k, key, sec_len);
        int score = levenshtein(key, k);
        int by_name = levenshtein(name, kname) + (same_section ? 0 : 1);
        if (by_name < score) score = by_name;
        if (strlen(abbrev) > 1 && !strcmp(abbrev, kname) && 1 + !same_section < score)
            score = 1 + !same_section;
        if (score < best_score) { best_score = score; best = i; }
    }
    return CONFIG_KEYS[best].key;
}

// ---- values

static const char* type_expectation(const ConfigKey* k, char* buf, size_t cap) {
    switch (k->type) {
    case CONFIG_INT:
        if (k->max >= INT_MAX) snprintf(buf, cap, "an integer >= %.0f", k->min);
        else snprintf(buf, cap, "an integer in [%.0f, %.0f]", k->min, k->max);
        break;
    case CONFIG_FLOAT:
        if (k->max >= NOLIM) snprintf(buf, cap, "a number >= %g", k->min);
        else snprintf(buf, cap, "a number in [%g, %g]", k->min, k->max);
        break;
    case CONFIG_BOOL: snprintf(buf, cap, "a boolean (true/false, yes/no, on/off, 1/0)"); break;
    case CONFIG_STR: snprintf(buf, cap, "a string"); break;
    }
    return buf;
}

// Parses `text` as key k's type into v. Returns 0 when it is not valid.
static int parse_value(const ConfigKey* k, const char* text, ConfigValue* v) {
    char* end = NULL;
    errno = 0;
    switch (k->type) {
    case CONFIG_INT: {
        long long x = strtoll(text, &end, 10);
        if (errno || end == text || *end || x < (long long)k->min || x > (long long)k->max) return 0;
        v->i = x;
        return 1;
    }
    case CONFIG_FLOAT: {
        double x = strtod(text, &end);
        if (errno || end == text || *end || !isfinite(x) || x < k->min || x > k->max) return 0;
        v->f = x;
        return 1;
    }
    case CONFIG_BOOL: {
        static const char* const yes[] = {"true", "yes", "on", "1"};
        static const char* const no[] = {"false", "no", "off", "0"};
        for (int i = 0; i < 4; i++) {
            if (!strcasecmp(text, yes[i])) { v->i = 1; return 1; }
            if (!strcasecmp(text, no[i])) { v->i = 0; return 1; }
        }
        return 0;
    }
    case CONFIG_STR:
        free(v->s);
        v->s = dup_string(text);
        return 1;
    }
    return 0;
}

// Sets key (full "section.name") from text. `where` names the source in
// errors ("tiny.ini:7", "--set"); it becomes the value's origin.
static void set_from_text(Config* cfg, const char* key, const char* text, const char* where) {
    int i = key_index(key);
    if (i < 0)
        fatalf("%s: unknown key '%s' (did you mean '%s'?)", where, key, config_nearest_key(key));
    const ConfigKey* k = &CONFIG_KEYS[i];
    ConfigValue* v = &cfg->values[i];
    if (!parse_value(k, text, v)) {
        char want[96];
        fatalf("%s: bad value '%s' for '%s': expected %s", where, text, key,
               type_expectation(k, want, sizeof want));
    }
    free(v->origin);
    v->origin = dup_string(where);
    v->is_set = 1;
}

Config* config_new(void) {
    Config* cfg = callocCheck(1, sizeof(Config));
    for (int i = 0; i < NUM_CONFIG_KEYS; i++) {
        const ConfigKey* k = &CONFIG_KEYS[i];
        if (!parse_value(k, k->def, &cfg->values[i])) {
            fprintf(stderr, "rlhfd: internal error: default '%s' of %s is not valid\n", k->def, k->key);
            abort();
        }
        cfg->values[i].origin = dup_string("default");
    }
    return cfg;
}

void config_free(Config* cfg) {
    if (!cfg) return;
    for (int i = 0; i < NUM_CONFIG_KEYS; i++) {
        free(cfg->values[i].s);
        free(cfg->values[i].origin);
    }
    free(cfg);
}

// ---- INI files

typedef struct {
    Config* cfg;
    const char* path;
    FILE* f;
    int line; // number of the line inih is handling
} IniReader;

// inih asks for one line per call; counting them gives handlers the line
// number (Debian's inih is built without INI_HANDLER_LINENO).
static char* ini_read_line(char* str, int num, void* stream) {
    IniReader* r = (IniReader*)stream;
    char* got = fgets(str, num, r->f);
    if (!got) return NULL;
    r->line++;
    size_t n = strlen(str);
    if (n == (size_t)num - 1 && str[n - 1] != '\n' && !feof(r->f))
        fatalf("%s:%d: line too long (at most %d characters)", r->path, r->line, num - 2);
    return got;
}

static int ini_handle(void* user, const char* section, const char* name, const char* value) {
    IniReader* r = (IniReader*)user;
    char where[512], key[256];
    snprintf(where, sizeof where, "%s:%d", r->path, r->line);
    if (!name) return 1; // a bare "[section]" line (INI_CALL_HANDLER_ON_NEW_SECTION)
    if (section[0]) snprintf(key, sizeof key, "%s.%s", section, name);
    else snprintf(key, sizeof key, "%s", name);
    set_from_text(r->cfg, key, value, where);
    return 1;
}

void config_load_file(Config* cfg, const char* path) {
    FILE* f = fopen(path, "r");
    if (!f) fatalf("cannot read config '%s': %s", path, strerror(errno));
    IniReader r = {cfg, path, f, 0};
    int err = ini_parse_stream(ini_read_line, &r, ini_handle, &r);
    fclose(f);
    if (err > 0) fatalf("%s:%d: syntax error (expected '[section]' or 'key = value')", path, err);
    if (err < 0) fatalf("cannot parse config '%s' (out of memory)", path);
}

void config_set(Config* cfg, const char* assignment, const char* origin) {
    const char* eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        fatalf("%s: expected 'section.key=value', got '%s'", origin, assignment);
    char key[256];
    size_t n = (size_t)(eq - assignment);
    while (n > 0 && assignment[n - 1] == ' ') n--;
    if (n >= sizeof key) fatalf("%s: key too long in '%s'", origin, assignment);
    memcpy(key, assignment, n);
    key[n] = '\0';
    const char* value = eq + 1;
    while (*value == ' ') value++;
    set_from_text(cfg, key, value, origin);
}

void config_set_value(Config* cfg, const char* key, const char* value, const char* origin) {
    set_from_text(cfg, key, value, origin);
}

// ---- getters

static const ConfigValue* lookup(const Config* cfg, const char* key, ConfigType type) {
    int i = key_index(key);
    if (i < 0 || CONFIG_KEYS[i].type != type) {
        fprintf(stderr, "rlhfd: internal error: config key '%s' %s\n", key,
                i < 0 ? "is not registered" : "read with the wrong type");
        abort();
    }
    return &cfg->values[i];
}

int config_int(const Config* cfg, const char* key) { return (int)lookup(cfg, key, CONFIG_INT)->i; }
double config_double(const Config* cfg, const char* key) { return lookup(cfg, key, CONFIG_FLOAT)->f; }
float config_float(const Config* cfg, const char* key) { return (float)config_double(cfg, key); }
const char* config_str(const Config* cfg, const char* key) { return lookup(cfg, key, CONFIG_STR)->s; }
int config_bool(const Config* cfg, const char* key) { return (int)lookup(cfg, key, CONFIG_BOOL)->i; }

static const ConfigValue* lookup_any(const Config* cfg, const char* key) {
    int i = key_index(key);
    if (i < 0) {
        fprintf(stderr, "rlhfd: internal error: config key '%s' is not registered\n", key);
        abort();
    }
    return &cfg->values[i];
}

int config_is_set(const Config* cfg, const char* key) { return lookup_any(cfg, key)->is_set; }
const char* config_origin(const Config* cfg, const char* key) { return lookup_any(cfg, key)->origin; }

// ---- output

json_t* config_to_json(const Config* cfg) {
    json_t* obj = json_object();
    for (int i = 0; i < NUM_CONFIG_KEYS; i++) {
        const ConfigValue* v = &cfg->values[i];
        json_t* j = NULL;
        switch (CONFIG_KEYS[i].type) {
        case CONFIG_INT: j = json_integer(v->i); break;
        case CONFIG_FLOAT: j = json_real(v->f); break;
        case CONFIG_STR: j = json_string(v->s); break;
        case CONFIG_BOOL: j = json_boolean(v->i); break;
        }
        json_object_set_new(obj, CONFIG_KEYS[i].key, j);
    }
    return obj;
}

static void format_value(const ConfigKey* k, const ConfigValue* v, char* buf, size_t cap) {
    switch (k->type) {
    case CONFIG_INT: snprintf(buf, cap, "%lld", v->i); break;
    case CONFIG_FLOAT: snprintf(buf, cap, "%.9g", v->f); break;
    case CONFIG_STR: snprintf(buf, cap, "%s", v->s); break;
    case CONFIG_BOOL: snprintf(buf, cap, "%s", v->i ? "true" : "false"); break;
    }
}

// Prints keys grouped by section, in registry order (sections are contiguous).
void config_print(const Config* cfg, FILE* f) {
    const char* section = NULL;
    size_t section_len = 0;
    for (int i = 0; i < NUM_CONFIG_KEYS; i++) {
        const char* key = CONFIG_KEYS[i].key;
        const char* dot = strchr(key, '.');
        size_t len = (size_t)(dot - key);
        if (!section || len != section_len || strncmp(section, key, len)) {
            fprintf(f, "%s[%.*s]\n", section ? "\n" : "", (int)len, key);
            section = key;
            section_len = len;
        }
        char val[1024];
        format_value(&CONFIG_KEYS[i], &cfg->values[i], val, sizeof val);
        char line[1400];
        snprintf(line, sizeof line, "%s = %s", dot + 1, val);
        fprintf(f, "%-40s ; %s\n", line, cfg->values[i].origin);
    }
}

void config_print_help(FILE* f) {
    static const char* const type_names[] = {"int", "float", "string", "bool"};
    for (int i = 0; i < NUM_CONFIG_KEYS; i++) {
        const ConfigKey* k = &CONFIG_KEYS[i];
        char def[128];
        snprintf(def, sizeof def, "%s (default '%s')", type_names[k->type], k->def);
        fprintf(f, "  %-24s %-36s %s\n", k->key, def, k->doc);
    }
}

const ConfigKey* config_keys(int* n) {
    if (n) *n = NUM_CONFIG_KEYS;
    return CONFIG_KEYS;
}
