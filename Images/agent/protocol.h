/* The slurm-vm agent channel: framed messages over one byte stream (a virtio-serial port, a virtio
 * console or a 16550 serial port, whichever the VMM provides; the framing does not care).
 *
 * Every frame: 12-byte header, then `len` payload bytes. All integers little-endian.
 *   u16 magic 0x5653 ("SV")  u8 type  u8 flags (0)  u32 session id  u32 len (<= SVA_MAX_PAYLOAD)
 * A reader that meets a bad magic or an oversized length drops one byte and scans on, so a stream
 * joined mid-frame (host reconnecting) recovers at the next frame. A string is u32 length + bytes.
 *
 * Host -> guest                                  Guest -> host
 *   HELLO    u64 nonce                             READY     u64 nonce (0 unsolicited at boot), u64 uptime_ms,
 *   EXEC     u32 uid, u32 gid, u32 ngroups,                  u32 ncpus, u64 mem_kb, str hostname,
 *            u32 groups[], str cwd, u32 argc,                str kernel release, str agent version
 *            str argv[], u32 envc, str env[]         STARTED   u32 pid
 *   STDIN    bytes (empty: end of input)             STDOUT    bytes
 *   SIGNAL   u32 signal number                       STDERR    bytes
 *   SHUTDOWN u32 0 power off, 1 reboot               EXIT      i32 exit code (-1 if signalled), i32 signal
 *   RELAY    bytes (empty: end of stream)            STDIN_ACK u32 bytes written to the command
 *   RESIZE   u32 rows, u32 columns
 *                                                    ERROR     str message (then EXIT, for a session)
 *                                                    RELAY_OUT bytes (empty: the command closed it)
 * EXEC may end with `str relay_env` (absent or empty: no relay). Then the command gets one end of a
 * stream socket as descriptor 3 and relay_env=3 in its environment; what it writes there reaches the
 * host as RELAY_OUT, RELAY payloads are written to it. This carries a task's PMI channel (PMI_FD)
 * between slurmstepd and an MPI rank in the guest; for PMI_FD the agent answers the one PMI-1 query
 * whose answer is wrong inside a guest (PMI_process_mapping, see agent.c). The agent buffers at most
 * SVA_RELAY_BUFFER bytes of RELAY the command has not read; beyond that the relay is closed with an
 * ERROR. The host keeps its end open until the task ends, whatever the guest does.
 * EXEC may go on after relay_env (then present, empty for none) with `u32 rows, u32 columns`: the
 * command gets a pseudo-terminal of that size as its controlling terminal and its stdin, stdout and
 * stderr (agent version 3). Its output, echo included, arrives as STDOUT; STDIN is what is typed, so
 * the terminal's special characters (Ctrl-C, Ctrl-Z, Ctrl-D) act on the guest's foreground process
 * group; RESIZE changes the size (the foreground group gets SIGWINCH). The session ends when the
 * command has ended and the terminal has no more output (or none for SVA_TTY_LINGER_MS, when a
 * process left behind keeps it open).
 * Flow control: the host keeps at most SVA_STDIN_WINDOW unacknowledged stdin bytes per session. Output
 * needs none: the host reads the channel continuously, and a full channel blocks the agent's write.
 */
#ifndef SVA_PROTOCOL_H
#define SVA_PROTOCOL_H

#define SVA_MAGIC         0x5653u
#define SVA_HEADER        12u
#define SVA_MAX_PAYLOAD   (1u << 20)
#define SVA_STDIN_WINDOW  (256u << 10)
#define SVA_RELAY_BUFFER  (4u << 20)
#define SVA_RELAY_FD      3
#define SVA_TTY_LINGER_MS 200
#define SVA_VERSION       "3"

enum sva_type {
    SVA_HELLO = 0x01,
    SVA_EXEC = 0x02,
    SVA_STDIN = 0x03,
    SVA_SIGNAL = 0x04,
    SVA_SHUTDOWN = 0x05,
    SVA_RELAY = 0x06,
    SVA_RESIZE = 0x07,
    SVA_READY = 0x81,
    SVA_STARTED = 0x82,
    SVA_STDOUT = 0x83,
    SVA_STDERR = 0x84,
    SVA_EXIT = 0x85,
    SVA_STDIN_ACK = 0x86,
    SVA_ERROR = 0x87,
    SVA_RELAY_OUT = 0x88,
};

/* Exit codes of a command that could not be started, as a shell reports them. */
#define SVA_EXIT_NOT_FOUND   127
#define SVA_EXIT_CANNOT_EXEC 126
#endif
