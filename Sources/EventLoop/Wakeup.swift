import CLibevent
import Glibc

/// Sends one-byte commands to an event loop from any thread, through a non-blocking pipe.
public struct WakeupSender: Sendable {
    let fd: Int32

    /// Queues `command`; safe from any thread, never blocks.
    public func send(_ command: UInt8) {
        var byte = command
        while write(fd, &byte, 1) < 0 && currentErrno == EINTR {}
    }
}

/// The loop side of a wakeup pipe: runs its handler on the loop thread for every command byte received.
public final class WakeupReceiver {
    private var event: OpaquePointer?
    private let readFD: Int32
    private let writeFD: Int32
    private let handler: (UInt8) -> Void

    /// A pipe pair; the sender may be handed to other threads before the receiver is attached to a loop.
    public static func makePipe() throws(SystemError) -> (receive: Int32, send: WakeupSender) {
        var fds: (Int32, Int32) = (0, 0)
        _ = try withUnsafeMutableBytes(of: &fds) { raw throws(SystemError) in
            try syscall("pipe") { pipe(raw.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        }
        for fd in [fds.0, fds.1] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        return (fds.0, WakeupSender(fd: fds.1))
    }

    /// Attaches the read end of a pipe from `makePipe` to `base`. The receiver closes both ends when freed.
    public init(base: EventBase, receive: Int32, send: WakeupSender, handler: @escaping (UInt8) -> Void) {
        readFD = receive
        writeFD = send.fd
        self.handler = handler
        event = event_new(base.base, receive, Int16(EV_READ | EV_PERSIST), { fd, _, context in
            let receiver = Unmanaged<WakeupReceiver>.fromOpaque(context!).takeUnretainedValue()
            var buffer = (UInt64(0), UInt64(0))
            let n = withUnsafeMutableBytes(of: &buffer) { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            withUnsafeBytes(of: buffer) { raw in
                for i in 0..<n { receiver.handler(raw[i]) }
            }
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    deinit {
        freeEvent(event)
        Socket.close(readFD)
        Socket.close(writeFD)
    }
}
