// status_config.c - status server options from the status.* config keys, so
// every command resolves the socket path the same way.
#include <stdio.h>
#include <string.h>
#include "common/config.h"
#include "coordinator/status_server.h"

int status_options_from_config(const Config* cfg, const char* run_dir, StatusServerOptions* o,
                               char* path, size_t pathlen) {
    memset(o, 0, sizeof *o);
    const char* sock = config_str(cfg, "status.socket");
    path[0] = '\0';
    if (!strcmp(sock, "none")) {
        // no Unix socket
    } else if (sock[0]) {
        snprintf(path, pathlen, "%s", sock);
    } else if (run_dir && run_dir[0]) {
        snprintf(path, pathlen, "%s/status.sock", run_dir);
    }
    o->socket_path = path[0] ? path : NULL;
    const char* listen = config_str(cfg, "status.listen");
    const char* token = config_str(cfg, "status.token");
    o->listen = listen[0] ? listen : NULL;
    o->token = token[0] ? token : NULL;
    return o->socket_path != NULL || o->listen != NULL;
}
