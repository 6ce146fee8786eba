import CLibevent
import Glibc
import Synchronization

// MARK: - Trampolines
//
// Capture-free functions that libevent calls with the relay as an unretained context pointer. Each marks
// the relay as inside a callback so that a close triggered from within defers the final release to here.

@inline(__always)
private func withRelay(_ context: UnsafeMutableRawPointer?, _ body: (Relay) -> Void) {
    let unmanaged = Unmanaged<Relay>.fromOpaque(context!)
    let release = unmanaged._withUnsafeGuaranteedRef { relay -> Bool in
        let outer = relay.inCallback
        relay.inCallback = true
        body(relay)
        relay.inCallback = outer
        guard !outer && relay.releasePending else { return false }
        relay.releasePending = false
        return true
    }
    if release { unmanaged.release() }
}

let relayIOCallback: event_callback_fn = { fd, what, context in
    withRelay(context) { $0.ready(fd: fd, what: Int32(what)) }
}

let relayIdleCallback: event_callback_fn = { _, _, context in
    withRelay(context) { $0.idleCheck() }
}

let relayFirstByteCallback: event_callback_fn = { _, _, context in
    withRelay(context) { $0.upstreamFailed(.firstByteTimeout) }
}

// MARK: - Forwarding

extension Relay {
    @inline(__always)
    func ready(fd: Int32, what: Int32) {
        switch state {
        case .relaying:
            let side = fd == sides[0].fd ? Relay.client : Relay.upstream
            if what & EV_READ != 0 { readable(side) }
            if what & EV_WRITE != 0 && state == .relaying { writable(side) }
        case .idle, .closed:
            break
        }
    }

    /// Data is ready on `side`: read it and write it straight to the other side, queueing only what that
    /// side cannot take now. A few reads per wakeup when the socket keeps the scratch buffer full.
    @inline(__always)
    func readable(_ side: Int) {
        let source = sides + side
        let peer = 1 - side
        let destination = sides + peer
        let scratch = eventBase.scratch
        let size = eventBase.scratchSize
        lastActivity = eventBase.coarseMicroseconds
        if options.measureLatency { turn(side, now: eventBase.monotonicMicroseconds) }
        for _ in 0..<4 {
            if destination.pointee.queue != nil && destination.pointee.queued > 0 {
                readIntoQueue(side)
                return
            }
            let n = read(source.pointee.fd, scratch, size)
            if n > 0 {
                source.pointee.bytesRead &+= n
                if let counters = byteCounters { count(n, counters + side) }
                if !firstByteSeen { beforeFirstByte(side, scratch, n) }
                var written = send(destination.pointee.fd, scratch, n, Int32(MSG_NOSIGNAL))
                if written < 0 {
                    let code = currentErrno
                    guard code == EAGAIN || code == EINTR else { return failed(peer, code) }
                    written = 0
                }
                if written < n {
                    enqueue(peer, scratch + written, n - written)
                    return
                }
                if n < size { return }
            } else if n == 0 {
                if side == Relay.upstream && !firstByteSeen && upstreamFailed(.closed) { return }
                return endOfFile(side)
            } else {
                let code = currentErrno
                if code == EAGAIN || code == EINTR { return }
                return failed(side, code)
            }
        }
    }

    /// Adds a chunk to a metric counter only this thread writes: a relaxed load and store, no locked
    /// instruction.
    @inline(__always)
    private func count(_ n: Int, _ cell: UnsafeMutablePointer<Atomic<Int>>) {
        cell.pointee.store(cell.pointee.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    /// Until the backend's first byte: keep the client's bytes for replay and watch for the first byte.
    private func beforeFirstByte(_ side: Int, _ bytes: UnsafeRawPointer, _ count: Int) {
        if side == Relay.upstream {
            firstByteSeen = true
            if let replay { evbuffer_free(replay) }
            replay = nil
            disarmFirstByteTimer()
            delegate?.relayFirstByte(self)
            return
        }
        if let replay {
            // Past the limit the connection can no longer be replayed: stop keeping its bytes.
            if evbuffer_get_length(replay) + count > options.replayLimit {
                evbuffer_free(replay)
                self.replay = nil
            } else {
                evbuffer_add(replay, bytes, count)
            }
        }
        armFirstByteTimer()
    }

    private func disarmFirstByteTimer() {
        guard firstByteTimerArmed else { return }
        event_del(event(.firstByte))
        firstByteTimerArmed = false
    }

    /// Starts the first-byte timeout, if configured and not already running.
    private func armFirstByteTimer() {
        guard options.firstByteTimeoutMicroseconds > 0 && !firstByteTimerArmed else { return }
        firstByteTimerArmed = true
        var tv = timevalFrom(microseconds: options.firstByteTimeoutMicroseconds)
        event_add(event(.firstByte), &tv)
    }

    /// The backend failed before its first byte: the delegate may replay on another backend (true), or
    /// the failure takes its course (false).
    @discardableResult
    func upstreamFailed(_ failure: UpstreamFailure) -> Bool {
        guard state == .relaying else { return false }
        disarmFirstByteTimer()
        let replayable = canReplay
        let response = delegate?.relayUpstreamFailed(self, failure) ?? .proceed
        if replayable && response == .replay && state == .relaying {
            detachUpstream()
            delegate?.relayDetached(self)
            return true
        }
        if failure == .firstByteTimeout && state == .relaying { close(.upstreamError(ETIMEDOUT)) }
        return state != .relaying
    }

    /// Turn-taking without parsing: client bytes start a wait, the first backend bytes after them end it.
    private func turn(_ side: Int, now: Int64) {
        if side == Relay.client {
            if awaitingSince == 0 { awaitingSince = now }
        } else if awaitingSince != 0 {
            let latency = now - awaitingSince
            awaitingSince = 0
            delegate?.relayMeasured(self, latency: latency)
        }
    }

    /// While the other side has a queue, read into its tail directly so bytes stay in order.
    private func readIntoQueue(_ side: Int) {
        let source = sides + side
        let peer = 1 - side
        let queue = sides[peer].queue!
        var vector = iovec()
        let want = min(eventBase.scratchSize, max(4096, options.highWatermark - evbuffer_get_length(queue)))
        guard evbuffer_reserve_space(queue, want, &vector, 1) >= 1 else { return }
        let n = read(source.pointee.fd, vector.iov_base, min(vector.iov_len, want))
        if n > 0 {
            if !firstByteSeen { beforeFirstByte(side, vector.iov_base, n) }
            vector.iov_len = n
            evbuffer_commit_space(queue, &vector, 1)
            source.pointee.bytesRead &+= n
            if let counters = byteCounters { count(n, counters + side) }
            pauseIfFull(peer)
        } else if n == 0 {
            evbuffer_commit_space(queue, nil, 0)
            if side == Relay.upstream && !firstByteSeen && upstreamFailed(.closed) { return }
            endOfFile(side)
        } else {
            evbuffer_commit_space(queue, nil, 0)
            let code = currentErrno
            if code != EAGAIN && code != EINTR { failed(side, code) }
        }
    }

    /// Queues bytes for `side` that its socket did not take, and waits for it to turn writable.
    private func enqueue(_ side: Int, _ bytes: UnsafeMutableRawPointer, _ count: Int) {
        if sides[side].queue == nil { sides[side].queue = evbuffer_new() }
        evbuffer_add(sides[side].queue, bytes, count)
        if !sides[side].writeArmed {
            sides[side].writeArmed = true
            event_add(writeEvent(side), nil)
        }
        pauseIfFull(side)
    }

    /// Stops reading from the peer of `side` while `side`'s queue is at the high watermark.
    private func pauseIfFull(_ side: Int) {
        let peer = 1 - side
        if sides[side].queued >= options.highWatermark && !sides[peer].paused {
            sides[peer].paused = true
            event_del(readEvent(peer))
        }
    }

    /// `side` can take more bytes: flush its queue, resume its paused peer, finish a pending half-close.
    func writable(_ side: Int) {
        lastActivity = eventBase.coarseMicroseconds
        let target = sides + side
        if let queue = target.pointee.queue, evbuffer_get_length(queue) > 0 {
            let n = evbuffer_write(queue, target.pointee.fd)
            if n < 0 {
                let code = currentErrno
                guard code == EAGAIN || code == EINTR else { return failed(side, code) }
            }
        }
        let remaining = target.pointee.queued
        let peer = 1 - side
        if remaining == 0 && target.pointee.writeArmed {
            target.pointee.writeArmed = false
            event_del(writeEvent(side))
        }
        if sides[peer].paused && remaining <= options.highWatermark / 2 {
            sides[peer].paused = false
            if !sides[peer].eof { event_add(readEvent(peer), nil) }
        }
        if remaining == 0 && sides[peer].eof { shutdownWrite(side) }
    }

    /// `side` finished sending: stop reading it, and shut the other side's write half once flushed.
    private func endOfFile(_ side: Int) {
        if side == Relay.upstream && !sides[Relay.client].eof { upstreamEndedFirst = true }
        sides[side].eof = true
        event_del(readEvent(side))
        let peer = 1 - side
        if sides[peer].queued == 0 { shutdownWrite(peer) }
    }

    private func shutdownWrite(_ side: Int) {
        guard !sides[side].writeShut else { return }
        sides[side].writeShut = true
        shutdown(sides[side].fd, Int32(SHUT_WR))
        if sides[0].writeShut && sides[1].writeShut { close(.completed) }
    }

    private func failed(_ side: Int, _ code: Int32) {
        if side == Relay.upstream && !firstByteSeen && upstreamFailed(.reset(code)) { return }
        close(side == Relay.client ? .clientError(code) : .upstreamError(code))
    }

    func established() {
        state = .relaying
        let me = Unmanaged.passUnretained(self).toOpaque()
        let base = eventBase.base
        let persistRead = Int16(EV_READ | EV_PERSIST)
        let persistWrite = Int16(EV_WRITE | EV_PERSIST)
        event_assign(event(.clientRead), base, sides[0].fd, persistRead, relayIOCallback, me)
        event_assign(event(.clientWrite), base, sides[0].fd, persistWrite, relayIOCallback, me)
        event_assign(event(.upstreamRead), base, sides[1].fd, persistRead, relayIOCallback, me)
        event_assign(event(.upstreamWrite), base, sides[1].fd, persistWrite, relayIOCallback, me)
        event_assign(event(.idle), base, -1, 0, relayIdleCallback, me)
        event_assign(event(.firstByte), base, -1, 0, relayFirstByteCallback, me)
        if !sides[0].eof { event_add(event(.clientRead), nil) }
        event_add(event(.upstreamRead), nil)
        if let replay, evbuffer_get_length(replay) > 0 {
            // A replay: a copy of the kept bytes goes first; the originals stay kept should this backend fail too.
            let queue = evbuffer_new()!
            sides[1].queue = queue
            var extents = [iovec](repeating: iovec(), count: 16)
            let found = Int(evbuffer_peek(replay, -1, nil, &extents, 16))
            if found > extents.count {
                extents = [iovec](repeating: iovec(), count: found)
                _ = evbuffer_peek(replay, -1, nil, &extents, Int32(found))
            }
            for extent in extents.prefix(found) { evbuffer_add(queue, extent.iov_base, extent.iov_len) }
            sides[1].writeArmed = true
            event_add(event(.upstreamWrite), nil)
            armFirstByteTimer()
        } else if sides[0].eof {
            shutdownWrite(Relay.upstream)
        }
        lastActivity = eventBase.coarseMicroseconds
        if options.idleTimeoutMicroseconds > 0 {
            var tv = timevalFrom(microseconds: options.idleTimeoutMicroseconds)
            event_add(event(.idle), &tv)
        }
    }

    func idleCheck() {
        guard state == .relaying else { return }
        let idleFor = eventBase.coarseMicroseconds - lastActivity
        let remaining = options.idleTimeoutMicroseconds - idleFor
        if remaining <= 0 {
            close(.idleTimeout)
        } else {
            var tv = timevalFrom(microseconds: remaining)
            event_add(event(.idle), &tv)
        }
    }
}
