import CLibevent
import Glibc

/// One active health check: connect to a backend, optionally send bytes and read a reply, judge it, and
/// report once. Runs on an event loop without blocking it; the whole probe is bounded by its timeout.
///
/// The judge sees the reply after every read, and says `needMore` while the reply could still turn out
/// right. Once the reply is complete it must decide: when the backend closed, when `maxReply` bytes have
/// arrived, or when the reply ends with a complete line and nothing more arrives for `settle` (a backend
/// that answered one wrong line and keeps the connection open fails then, not at the timeout).
public final class Probe {
    public enum Verdict: Equatable, Sendable {
        case pass
        case fail(String)
        /// The probe could not run for a reason of this proxy's own (out of descriptors or ports): it says
        /// nothing about the backend.
        case inconclusive(String)
        /// Read more bytes before judging.
        case needMore
    }

    private let base: EventBase
    private let send: [UInt8]
    private let expectsReply: Bool
    private let judge: ([UInt8], Bool) -> Verdict
    private var completion: ((Verdict) -> Void)?
    private var fd: Int32 = -1
    private var ioEvent: OpaquePointer?
    private var timer: OpaquePointer?
    private var settleTimer: OpaquePointer?
    private var settle: Int64 = 0
    private var sent = 0
    private var reply: [UInt8] = []
    private var connected = false
    static let maxReply = 16 << 10
    /// How long a reply ending with a complete line may stay silent before it counts as complete: at most
    /// 50 ms, and at most a quarter of the probe's timeout.
    static func settleMicroseconds(timeout: Int64) -> Int64 { max(1, min(50_000, timeout / 4)) }

    /// Starts a probe. With `expectsReply` false, a completed connect (and send) passes. `judge` gets the
    /// reply so far and whether it is complete (then it must not answer `needMore`). `completion` is called
    /// exactly once, on the loop's thread; the probe keeps itself alive until then.
    public static func start(base: EventBase, endpoint: Endpoint, timeoutMicroseconds: Int64, send: [UInt8],
                             expectsReply: Bool, judge: @escaping (_ reply: [UInt8], _ complete: Bool) -> Verdict,
                             completion: @escaping (Verdict) -> Void) {
        let probe = Probe(base: base, send: send, expectsReply: expectsReply, judge: judge, completion: completion)
        probe.begin(endpoint, timeoutMicroseconds: timeoutMicroseconds)
    }

    private init(base: EventBase, send: [UInt8], expectsReply: Bool, judge: @escaping ([UInt8], Bool) -> Verdict,
                 completion: @escaping (Verdict) -> Void) {
        self.base = base
        self.send = send
        self.expectsReply = expectsReply
        self.judge = judge
        self.completion = completion
    }

    private func begin(_ endpoint: Endpoint, timeoutMicroseconds: Int64) {
        _ = Unmanaged.passRetained(self)
        do throws(ConnectError) {
            fd = try Socket.startConnect(endpoint)
        } catch {
            return finish(Self.failed(error))
        }
        let me = Unmanaged.passUnretained(self).toOpaque()
        timer = event_new(base.base, -1, 0, { _, _, context in
            Unmanaged<Probe>.fromOpaque(context!).takeUnretainedValue().timedOut()
        }, me)
        settle = Self.settleMicroseconds(timeout: timeoutMicroseconds)
        settleTimer = event_new(base.base, -1, 0, { _, _, context in
            Unmanaged<Probe>.fromOpaque(context!).takeUnretainedValue().judgeComplete()
        }, me)
        var tv = timevalFrom(microseconds: timeoutMicroseconds)
        event_add(timer, &tv)
        ioEvent = event_new(base.base, fd, Int16(EV_WRITE | EV_PERSIST), { _, what, context in
            Unmanaged<Probe>.fromOpaque(context!).takeUnretainedValue().ready(Int32(what))
        }, me)
        event_add(ioEvent, nil)
    }

    private func ready(_ what: Int32) {
        if !connected {
            if let error = Socket.connectError(fd) { return finish(Self.failed(error)) }
            connected = true
        }
        if sent < send.count {
            let n = send.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, send.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if currentErrno == EAGAIN || currentErrno == EINTR { return }
                return finish(.fail("send: \(errnoText(currentErrno))"))
            }
            sent += n
            if sent < send.count { return }
        }
        guard expectsReply else { return finish(.pass) }
        if what & EV_WRITE != 0 {
            // Everything is sent: wait for the reply instead of writability.
            event_del(ioEvent)
            event_assign(ioEvent, base.base, fd, Int16(EV_READ | EV_PERSIST), { _, what, context in
                Unmanaged<Probe>.fromOpaque(context!).takeUnretainedValue().ready(Int32(what))
            }, Unmanaged.passUnretained(self).toOpaque())
            event_add(ioEvent, nil)
            return
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if currentErrno == EAGAIN || currentErrno == EINTR { return }
            return finish(.fail("read: \(errnoText(currentErrno))"))
        }
        if n > 0 { reply += buffer[0..<n] }
        if n == 0 || reply.count > Self.maxReply { return judgeComplete(closed: n == 0) }
        let verdict = judge(reply, false)
        if verdict != .needMore { return finish(verdict) }
        // A complete line, and nothing more for a moment: the backend has said what it had to say.
        event_del(settleTimer)
        if reply.last == 10 {
            var tv = timevalFrom(microseconds: settle)
            event_add(settleTimer, &tv)
        }
    }

    /// The reply is complete: judge it for good.
    private func judgeComplete(closed: Bool = false) {
        let verdict = judge(reply, true)
        if verdict != .needMore { return finish(verdict) }
        if closed { return finish(.fail("closed after \(reply.count) bytes without a matching reply")) }
        if reply.count > Self.maxReply { return finish(.fail("no matching reply in the first \(Self.maxReply) bytes")) }
        finish(.fail("no matching reply"))
    }

    private func timedOut() {
        guard !reply.isEmpty, case .fail(let why) = judge(reply, true) else { return finish(.fail("timed out")) }
        finish(.fail("timed out, \(why)"))
    }

    private static func failed(_ error: ConnectError) -> Verdict {
        error.isLocal ? .inconclusive(error.description) : .fail(error.description)
    }

    private func finish(_ verdict: Verdict) {
        guard let completion else { return }
        self.completion = nil
        if let ioEvent { event_free(ioEvent) }
        if let timer { event_free(timer) }
        if let settleTimer { event_free(settleTimer) }
        ioEvent = nil
        timer = nil
        settleTimer = nil
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        completion(verdict)
        Unmanaged.passUnretained(self).release()
    }
}
