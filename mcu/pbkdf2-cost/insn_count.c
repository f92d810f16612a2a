/* A QEMU TCG plugin (plugin API version 1, QEMU 7.2) counting the guest
 * instructions executed between entering two functions: start= and stop=
 * are their addresses (from nm). Each time `stop` is entered it prints the
 * count since `start` was last entered. Debian's QEMU ships no plugin
 * header, so the few API functions used are declared here.
 *
 * Build: gcc -shared -fPIC -O2 -o insn_count.so insn_count.c
 * Run:   qemu-system-arm ... -plugin ./insn_count.so,start=0x...,stop=0x... -d plugin
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t executed; /* every instruction, by whole translation blocks */
static uint64_t at_start;
static uint64_t start_addr, stop_addr;

static void on_start(unsigned int vcpu, void *udata) {
    (void)vcpu; (void)udata;
    at_start = executed;
}

static void on_stop(unsigned int vcpu, void *udata) {
    char line[64];
    (void)vcpu; (void)udata;
    snprintf(line, sizeof line, "insn_count: %" PRIu64 "\n", executed - at_start);
    qemu_plugin_outs(line);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    uint64_t pc = qemu_plugin_tb_vaddr(tb);
    (void)id;
    /* The marker callbacks run before the block's own count is added. */
    if (pc == start_addr)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_start, QEMU_PLUGIN_CB_NO_REGS, NULL);
    if (pc == stop_addr)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_stop, QEMU_PLUGIN_CB_NO_REGS, NULL);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info,
                                                               int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "start=", 6) == 0)
            start_addr = strtoull(argv[i] + 6, NULL, 0) & ~1ull; /* drop the Thumb bit */
        else if (strncmp(argv[i], "stop=", 5) == 0)
            stop_addr = strtoull(argv[i] + 5, NULL, 0) & ~1ull;
    }
    if (!start_addr || !stop_addr) {
        fprintf(stderr, "insn_count: give start=ADDR,stop=ADDR\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    return 0;
}
