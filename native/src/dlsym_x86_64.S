/* dlsym interposer for x86-64. Asks vgpu_dlsym_filter(handle, name, return_address) whether to
 * answer; if not, restores the arguments and *jumps* to the C library's dlsym, so glibc sees the
 * original caller's return address and RTLD_NEXT resolves relative to the real caller. */
#if defined(__x86_64__)
    .text
    .globl dlsym
    .type dlsym, @function
dlsym:
    .cfi_startproc
    endbr64
    pushq %rdi
    .cfi_adjust_cfa_offset 8
    pushq %rsi
    .cfi_adjust_cfa_offset 8
    subq $8, %rsp
    .cfi_adjust_cfa_offset 8
    movq 24(%rsp), %rdx
    call vgpu_dlsym_filter
    addq $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq %rsi
    .cfi_adjust_cfa_offset -8
    popq %rdi
    .cfi_adjust_cfa_offset -8
    testq %rax, %rax
    jz 1f
    ret
1:
    movq vgpu_real_dlsym_ptr(%rip), %rax
    jmp *%rax
    .cfi_endproc
    .size dlsym, .-dlsym
#endif
    .section .note.GNU-stack,"",@progbits
