/* A toy gd plugin in C: layers live in memory (ids and parents only), views are the home
 * directory, applies count the stream's bytes, diffs are the empty tar. It exists to prove
 * the ABI is plain C (tests/tests/plugin_c.rs builds it with cc and drives it through the
 * host adapter), and its status reports how many of its buffers the host still holds, so the
 * test can check that the host frees every buffer it is given. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gd_plugin.h"

#define MAX_LAYERS 64
#define MAX_ID 128

struct layer { char id[MAX_ID]; char parent[MAX_ID]; int used; };
struct toy { pthread_mutex_t mu; char home[4096]; struct layer layers[MAX_LAYERS]; };

static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static long live_buffers;

static struct gd_buf make_buf(const char *fmt, ...) {
    char tmp[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    struct gd_buf b = { malloc((size_t)n), (size_t)n };
    memcpy(b.ptr, tmp, (size_t)n);
    pthread_mutex_lock(&live_mu);
    live_buffers++;
    pthread_mutex_unlock(&live_mu);
    return b;
}

static void free_buffer(struct gd_buf b) {
    if (!b.ptr) return;
    free(b.ptr);
    pthread_mutex_lock(&live_mu);
    live_buffers--;
    pthread_mutex_unlock(&live_mu);
}

static int copy_str(char *dst, size_t cap, struct gd_str s) {
    if (!s.ptr || s.len >= cap) return -1;
    memcpy(dst, s.ptr, s.len);
    dst[s.len] = 0;
    return 0;
}

static struct layer *find(struct toy *t, const char *id) {
    for (int i = 0; i < MAX_LAYERS; i++)
        if (t->layers[i].used && strcmp(t->layers[i].id, id) == 0) return &t->layers[i];
    return NULL;
}

static int32_t not_found(struct gd_buf *err, const char *id) {
    *err = make_buf("{\"message\":\"layer %s does not exist\",\"id\":\"%s\"}", id, id);
    return GD_ERR_NOT_FOUND;
}

static int32_t probe(struct gd_str home, struct gd_buf *err) { (void)home; (void)err; return GD_OK; }

static int32_t open_(struct gd_str home, struct gd_str options, gd_handle *out, struct gd_buf *err) {
    (void)options;
    struct toy *t = calloc(1, sizeof *t);
    if (copy_str(t->home, sizeof t->home, home)) {
        free(t);
        *err = make_buf("{\"message\":\"home too long\"}");
        return GD_ERR_BAD_ARGUMENT;
    }
    pthread_mutex_init(&t->mu, NULL);
    *out = t;
    return GD_OK;
}

static void close_(gd_handle h) { free(h); }

static int32_t status(gd_handle h, struct gd_buf *out, struct gd_buf *err) {
    (void)h; (void)err;
    pthread_mutex_lock(&live_mu);
    long live = live_buffers;
    pthread_mutex_unlock(&live_mu);
    /* Counted before this buffer is made: what the host still holds from earlier calls. */
    *out = make_buf("[[\"Language\",\"C\"],[\"Live buffers\",\"%ld\"]]", live);
    return GD_OK;
}

static int32_t create(gd_handle h, struct gd_str ids, struct gd_str parents, struct gd_str options,
                      struct gd_buf *err) {
    (void)options;
    struct toy *t = h;
    char id[MAX_ID], parent[MAX_ID] = "";
    if (copy_str(id, sizeof id, ids)) {
        *err = make_buf("{\"message\":\"bad id\",\"id\":\"?\",\"reason\":\"too long\"}");
        return GD_ERR_INVALID_ID;
    }
    if (parents.ptr && copy_str(parent, sizeof parent, parents)) return not_found(err, "?");
    int32_t rc = GD_OK;
    pthread_mutex_lock(&t->mu);
    if (find(t, id)) {
        *err = make_buf("{\"message\":\"layer %s already exists\",\"id\":\"%s\"}", id, id);
        rc = GD_ERR_ALREADY_EXISTS;
    } else if (parent[0] && !find(t, parent)) {
        *err = make_buf("{\"message\":\"parent layer %s of %s does not exist\",\"id\":\"%s\","
                        "\"parent\":\"%s\"}", parent, id, id, parent);
        rc = GD_ERR_PARENT_NOT_FOUND;
    } else {
        rc = GD_ERR_STORE;
        for (int i = 0; i < MAX_LAYERS; i++) {
            if (!t->layers[i].used) {
                t->layers[i].used = 1;
                strcpy(t->layers[i].id, id);
                strcpy(t->layers[i].parent, parent);
                rc = GD_OK;
                break;
            }
        }
        if (rc) *err = make_buf("{\"message\":\"full\",\"path\":\"%s\",\"reason\":\"full\"}", t->home);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

static int32_t remove_(gd_handle h, struct gd_str ids, struct gd_buf *err) {
    struct toy *t = h;
    char id[MAX_ID];
    if (copy_str(id, sizeof id, ids)) return not_found(err, "?");
    int32_t rc = GD_OK;
    pthread_mutex_lock(&t->mu);
    struct layer *l = find(t, id);
    if (!l) {
        rc = not_found(err, id);
    } else {
        for (int i = 0; i < MAX_LAYERS; i++) {
            if (t->layers[i].used && strcmp(t->layers[i].parent, id) == 0) {
                *err = make_buf("{\"message\":\"layer %s has children (%s); remove them first\","
                                "\"id\":\"%s\",\"children\":\"%s\"}",
                                id, t->layers[i].id, id, t->layers[i].id);
                rc = GD_ERR_HAS_CHILDREN;
                break;
            }
        }
        if (rc == GD_OK) l->used = 0;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

/* Check that the layer exists; fill `id`. */
static int32_t known(struct toy *t, struct gd_str ids, char *id, struct gd_buf *err) {
    if (copy_str(id, MAX_ID, ids)) return not_found(err, "?");
    pthread_mutex_lock(&t->mu);
    int ok = find(t, id) != NULL;
    pthread_mutex_unlock(&t->mu);
    return ok ? GD_OK : not_found(err, id);
}

static int32_t get(gd_handle h, struct gd_str ids, struct gd_buf *out, struct gd_buf *err) {
    struct toy *t = h;
    char id[MAX_ID];
    int32_t rc = known(t, ids, id, err);
    if (rc == GD_OK) *out = make_buf("%s", t->home);
    return rc;
}

static int32_t put(gd_handle h, struct gd_str ids, struct gd_buf *err) {
    char id[MAX_ID];
    return known(h, ids, id, err);
}

static int32_t exists(gd_handle h, struct gd_str ids, uint8_t *out, struct gd_buf *err) {
    struct toy *t = h;
    char id[MAX_ID];
    if (copy_str(id, sizeof id, ids)) return not_found(err, "?");
    pthread_mutex_lock(&t->mu);
    *out = find(t, id) != NULL;
    pthread_mutex_unlock(&t->mu);
    return GD_OK;
}

static int32_t list(gd_handle h, struct gd_buf *out, struct gd_buf *err) {
    (void)err;
    struct toy *t = h;
    char json[8000] = "[";
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < MAX_LAYERS; i++) {
        struct layer *l = &t->layers[i];
        if (!l->used) continue;
        char one[400];
        if (l->parent[0])
            snprintf(one, sizeof one, "%s{\"id\":\"%s\",\"parent\":\"%s\",\"kind\":\"ro\","
                     "\"created\":0,\"size\":null,\"mounts\":0}", json[1] ? "," : "", l->id, l->parent);
        else
            snprintf(one, sizeof one, "%s{\"id\":\"%s\",\"parent\":null,\"kind\":\"ro\","
                     "\"created\":0,\"size\":null,\"mounts\":0}", json[1] ? "," : "", l->id);
        strncat(json, one, sizeof json - strlen(json) - 2);
    }
    pthread_mutex_unlock(&t->mu);
    strcat(json, "]");
    *out = make_buf("%s", json);
    return GD_OK;
}

static int32_t info(gd_handle h, struct gd_str ids, struct gd_buf *out, struct gd_buf *err) {
    char id[MAX_ID];
    int32_t rc = known(h, ids, id, err);
    if (rc == GD_OK)
        *out = make_buf("{\"id\":\"%s\",\"parent\":null,\"kind\":\"ro\",\"created\":0,"
                        "\"size\":null,\"mounts\":0}", id);
    return rc;
}

static int32_t metadata(gd_handle h, struct gd_str ids, struct gd_buf *out, struct gd_buf *err) {
    char id[MAX_ID];
    int32_t rc = known(h, ids, id, err);
    if (rc == GD_OK) *out = make_buf("{\"Toy\":\"%s\"}", id);
    return rc;
}

static int32_t diff(gd_handle h, struct gd_str ids, const struct gd_writer *w, uint64_t *written,
                    struct gd_buf *err) {
    char id[MAX_ID];
    int32_t rc = known(h, ids, id, err);
    if (rc) return rc;
    static const uint8_t end_of_archive[1024];
    if (w->write(w->ctx, end_of_archive, sizeof end_of_archive)) {
        *err = make_buf("{\"message\":\"the host's stream failed\",\"id\":\"%s\","
                        "\"archive\":{\"kind\":\"stream\",\"io\":{\"kind\":\"Other\","
                        "\"message\":\"the host's stream failed\"}}}", id);
        return GD_ERR_ARCHIVE;
    }
    *written = sizeof end_of_archive;
    return GD_OK;
}

static int32_t changes(gd_handle h, struct gd_str ids, struct gd_buf *out, struct gd_buf *err) {
    char id[MAX_ID];
    int32_t rc = known(h, ids, id, err);
    if (rc == GD_OK) *out = make_buf("[]");
    return rc;
}

static int32_t apply_diff(gd_handle h, struct gd_str ids, const struct gd_reader *r,
                          uint64_t *applied, struct gd_buf *err) {
    char id[MAX_ID];
    int32_t rc = known(h, ids, id, err);
    if (rc) return rc;
    uint8_t buf[4096];
    uint64_t total = 0;
    for (;;) {
        size_t n = 0;
        if (r->read(r->ctx, buf, sizeof buf, &n)) {
            *err = make_buf("{\"message\":\"reading failed\",\"driver\":\"ctoy\","
                            "\"reason\":\"reading failed\"}");
            return GD_ERR_DRIVER;
        }
        if (n == 0) break;
        total += n;
    }
    *applied = total;
    return GD_OK;
}

static int32_t diff_size(gd_handle h, struct gd_str ids, uint64_t *out, struct gd_buf *err) {
    char id[MAX_ID];
    int32_t rc = known(h, ids, id, err);
    if (rc == GD_OK) *out = 0;
    return rc;
}

static int32_t cleanup(gd_handle h, struct gd_buf *err) { (void)h; (void)err; return GD_OK; }

static const struct gd_plugin_table table = {
    .abi_major = GD_PLUGIN_ABI_MAJOR,
    .abi_minor = GD_PLUGIN_ABI_MINOR,
    .table_size = sizeof(struct gd_plugin_table),
    .name = "ctoy",
    .free_buffer = free_buffer,
    .probe = probe,
    .open = open_,
    .close = close_,
    .status = status,
    .create = create,
    .remove = remove_,
    .get = get,
    .put = put,
    .exists = exists,
    .list = list,
    .info = info,
    .metadata = metadata,
    .diff = diff,
    .changes = changes,
    .apply_diff = apply_diff,
    .diff_size = diff_size,
    .cleanup = cleanup,
};

const struct gd_plugin_table *gd_plugin_entry(void) { return &table; }
