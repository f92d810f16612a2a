/* A QEMU TCG plugin counting the guest instructions executed between two
 * addresses: from the entry of `begin` to the entry of `end` (the firmware's
 * noise_measure_begin / noise_measure_end). Used by ./size with
 * NOISE_SIZE_INSNS=1:
 *
 *   qemu-system-arm ... -plugin insn-count.so,begin=0x...,end=0x... \
 *       -d plugin -D out.txt
 *
 * prints "insns: N" into out.txt. Debian's QEMU 7.2 ships no example
 * plugins and no qemu-plugin.h, so the few API declarations used are
 * written here (plugin API version 1, as QEMU 7.2 defines it). Counts are
 * per executed translation block, so an exception in the middle of a block
 * would overcount it; the measured code takes none.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t begin_addr, end_addr, count;
static int counting;

static void on_tb(unsigned int vcpu, void *insns) {
    (void)vcpu;
    if (counting) count += (uintptr_t)insns;
}

static void on_begin(unsigned int vcpu, void *insns) {
    (void)vcpu;
    counting = 1;
    count = (uintptr_t)insns;
}

static void on_end(unsigned int vcpu, void *insns) {
    (void)vcpu;
    (void)insns;
    if (!counting) return;
    counting = 0;
    char line[64];
    snprintf(line, sizeof line, "insns: %" PRIu64 "\n", count);
    qemu_plugin_outs(line);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    uint64_t pc = qemu_plugin_tb_vaddr(tb);
    void *n = (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb);
    qemu_plugin_vcpu_udata_cb_t cb = pc == begin_addr ? on_begin : pc == end_addr ? on_end : on_tb;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, cb, QEMU_PLUGIN_CB_NO_REGS, n);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const struct qemu_info_t *info,
                                                               int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        /* Thumb symbols have bit 0 set; the PC does not. */
        if (strncmp(argv[i], "begin=", 6) == 0) begin_addr = strtoull(argv[i] + 6, NULL, 0) & ~1ULL;
        if (strncmp(argv[i], "end=", 4) == 0) end_addr = strtoull(argv[i] + 4, NULL, 0) & ~1ULL;
    }
    if (!begin_addr || !end_addr) {
        fprintf(stderr, "insn-count: need begin=ADDR,end=ADDR\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    return 0;
}
