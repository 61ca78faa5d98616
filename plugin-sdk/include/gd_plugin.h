/* gd driver plugin ABI 1.0, for plugins written in C (or anything with a C FFI).
 * The contract is docs/plugin-abi.md; the Rust definition is driver-api/src/plugin/abi.rs.
 * tests/c/toy_plugin.c is a complete (in-memory, toy) plugin written against this header. */
#ifndef GD_PLUGIN_H
#define GD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define GD_PLUGIN_ABI_MAJOR 1
#define GD_PLUGIN_ABI_MINOR 0

/* Status codes. On failure a function stores a JSON error report in *err. */
enum {
    GD_OK = 0,
    GD_ERR_NOT_FOUND = 1,
    GD_ERR_ALREADY_EXISTS = 2,
    GD_ERR_INVALID_ID = 3,
    GD_ERR_PARENT_NOT_FOUND = 4,
    GD_ERR_HAS_CHILDREN = 5,
    GD_ERR_MOUNTED = 6,
    GD_ERR_NOT_MOUNTED = 7,
    GD_ERR_READ_ONLY = 8,
    GD_ERR_IO = 9,
    GD_ERR_ARCHIVE = 10,
    GD_ERR_DRIVER = 11,
    GD_ERR_UNSUPPORTED = 12,
    GD_ERR_STORE = 13,
    GD_ERR_PANIC = 14,
    GD_ERR_BAD_ARGUMENT = 15,
};

/* Borrowed UTF-8, not NUL-terminated; ptr == NULL means absent. */
struct gd_str { const uint8_t *ptr; size_t len; };
/* Allocated by the plugin; the host returns it to free_buffer. ptr == NULL is empty. */
struct gd_buf { uint8_t *ptr; size_t len; };
struct gd_reader { void *ctx; int32_t (*read)(void *ctx, uint8_t *buf, size_t len, size_t *nread); };
struct gd_writer { void *ctx; int32_t (*write)(void *ctx, const uint8_t *buf, size_t len); };
typedef void *gd_handle;

struct gd_plugin_table {
    /* header: identical in every ABI major */
    uint32_t abi_major;
    uint32_t abi_minor;
    size_t table_size;
    const char *name;
    /* ABI 1.0 */
    void (*free_buffer)(struct gd_buf buf);
    int32_t (*probe)(struct gd_str home, struct gd_buf *err);
    int32_t (*open)(struct gd_str home, struct gd_str options, gd_handle *out, struct gd_buf *err);
    void (*close)(gd_handle h);
    int32_t (*status)(gd_handle h, struct gd_buf *out, struct gd_buf *err);
    int32_t (*create)(gd_handle h, struct gd_str id, struct gd_str parent, struct gd_str options,
                      struct gd_buf *err);
    int32_t (*remove)(gd_handle h, struct gd_str id, struct gd_buf *err);
    int32_t (*get)(gd_handle h, struct gd_str id, struct gd_buf *out, struct gd_buf *err);
    int32_t (*put)(gd_handle h, struct gd_str id, struct gd_buf *err);
    int32_t (*exists)(gd_handle h, struct gd_str id, uint8_t *out, struct gd_buf *err);
    int32_t (*list)(gd_handle h, struct gd_buf *out, struct gd_buf *err);
    int32_t (*info)(gd_handle h, struct gd_str id, struct gd_buf *out, struct gd_buf *err);
    int32_t (*metadata)(gd_handle h, struct gd_str id, struct gd_buf *out, struct gd_buf *err);
    int32_t (*diff)(gd_handle h, struct gd_str id, const struct gd_writer *w, uint64_t *written,
                    struct gd_buf *err);
    int32_t (*changes)(gd_handle h, struct gd_str id, struct gd_buf *out, struct gd_buf *err);
    int32_t (*apply_diff)(gd_handle h, struct gd_str id, const struct gd_reader *r,
                          uint64_t *applied, struct gd_buf *err);
    int32_t (*diff_size)(gd_handle h, struct gd_str id, uint64_t *out, struct gd_buf *err);
    int32_t (*cleanup)(gd_handle h, struct gd_buf *err);
};

/* The one symbol a plugin exports. */
const struct gd_plugin_table *gd_plugin_entry(void);

#endif
