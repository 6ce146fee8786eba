import CLibevent
import Glibc

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

let relayReadCallback: bufferevent_data_cb = { bev, context in
    withRelay(context) { $0.readable(bev!) }
}

let relayWriteCallback: bufferevent_data_cb = { bev, context in
    withRelay(context) { $0.drained(bev!) }
}

let relayEventCallback: bufferevent_event_cb = { bev, events, context in
    let code = currentErrno
    withRelay(context) { $0.event(bev!, events: events, errno: code) }
}

let relayIdleCallback: event_callback_fn = { _, _, context in
    withRelay(context) { $0.idleCheck() }
}

// MARK: - Forwarding

extension Relay {
    /// Data arrived on `bev`: move all of it to the other side, and pause this side if that side is full.
    @inline(__always)
    func readable(_ bev: OpaquePointer) {
        guard state == .relaying, let upstream else { return }
        let fromClient = bev == client
        let destination = fromClient ? upstream : client
        let input = bufferevent_get_input(bev)
        let output = bufferevent_get_output(destination)
        let count = evbuffer_get_length(input)
        evbuffer_add_buffer(output, input)
        if fromClient { clientSide.bytesRead &+= count } else { upstreamSide.bytesRead &+= count }
        lastActivity = eventBase.cachedMicroseconds
        if evbuffer_get_length(output) >= options.highWatermark {
            bufferevent_disable(bev, Int16(EV_READ))
            bufferevent_setwatermark(destination, Int16(EV_WRITE), options.highWatermark / 2, 0)
            if fromClient { clientSide.paused = true } else { upstreamSide.paused = true }
        }
    }

    /// `bev`'s output fell to its low watermark: resume the paused source, or finish a pending half-close.
    func drained(_ bev: OpaquePointer) {
        guard state == .relaying, let upstream else { return }
        let toClient = bev == client
        let source = toClient ? upstream : client
        lastActivity = eventBase.cachedMicroseconds
        if toClient ? upstreamSide.paused : clientSide.paused {
            if toClient { upstreamSide.paused = false } else { clientSide.paused = false }
            bufferevent_setwatermark(bev, Int16(EV_WRITE), 0, 0)
            if !(toClient ? upstreamSide.eof : clientSide.eof) {
                bufferevent_enable(source, Int16(EV_READ))
            }
        }
        if toClient ? upstreamSide.eof : clientSide.eof {
            shutdownIfFlushed(bev)
        }
    }

    func event(_ bev: OpaquePointer, events: Int16, errno code: Int32) {
        let events = Int32(events)
        if state == .connecting && bev == upstream {
            if events & BEV_EVENT_CONNECTED != 0 {
                established()
            } else {
                let error: ConnectError = events & BEV_EVENT_TIMEOUT != 0 ? .timedOut : ConnectError(errno: code)
                dropUpstream()
                delegate?.relayConnectFailed(self, error: error)
            }
            return
        }
        guard state == .relaying else { return }
        let fromClient = bev == client
        if events & BEV_EVENT_EOF != 0 && events & BEV_EVENT_READING != 0 {
            endOfFile(from: bev, fromClient: fromClient)
        } else if events & (BEV_EVENT_ERROR | BEV_EVENT_EOF) != 0 {
            let errorCode = code == 0 ? ECONNRESET : code
            close(fromClient ? .clientError(errorCode) : .upstreamError(errorCode))
        }
    }

    private func established() {
        guard let upstream else { return }
        state = .relaying
        bufferevent_set_timeouts(upstream, nil, nil)
        bufferevent_enable(upstream, Int16(EV_READ | EV_WRITE))
        bufferevent_enable(client, Int16(EV_READ | EV_WRITE))
        lastActivity = eventBase.cachedMicroseconds
        if options.idleTimeoutMicroseconds > 0 {
            idleTimer = event_new(eventBase.base, -1, 0, relayIdleCallback, Unmanaged.passUnretained(self).toOpaque())
            var tv = timevalFrom(microseconds: options.idleTimeoutMicroseconds)
            event_add(idleTimer, &tv)
        }
        delegate?.relayConnected(self)
    }

    /// One side finished sending: flush what it sent to the other side, then shut that side's write half.
    private func endOfFile(from bev: OpaquePointer, fromClient: Bool) {
        guard let upstream else { return }
        let destination = fromClient ? upstream : client
        if fromClient { clientSide.eof = true } else { upstreamSide.eof = true }
        let input = bufferevent_get_input(bev)
        let count = evbuffer_get_length(input)
        if count > 0 {
            evbuffer_add_buffer(bufferevent_get_output(destination), input)
            if fromClient { clientSide.bytesRead &+= count } else { upstreamSide.bytesRead &+= count }
        }
        bufferevent_disable(bev, Int16(EV_READ))
        bufferevent_setwatermark(destination, Int16(EV_WRITE), 0, 0)
        shutdownIfFlushed(destination)
    }

    /// Shuts the write half of `bev` once its output is empty, and closes the relay when both are shut.
    private func shutdownIfFlushed(_ bev: OpaquePointer) {
        let toClient = bev == client
        guard evbuffer_get_length(bufferevent_get_output(bev)) == 0 else { return }
        if toClient {
            guard !clientSide.writeShut else { return }
            clientSide.writeShut = true
        } else {
            guard !upstreamSide.writeShut else { return }
            upstreamSide.writeShut = true
        }
        shutdown(bufferevent_getfd(bev), Int32(SHUT_WR))
        if clientSide.writeShut && upstreamSide.writeShut {
            close(.completed)
        }
    }

    func idleCheck() {
        guard state == .relaying, let idleTimer else { return }
        let idleFor = eventBase.cachedMicroseconds - lastActivity
        let remaining = options.idleTimeoutMicroseconds - idleFor
        if remaining <= 0 {
            close(.idleTimeout)
        } else {
            var tv = timevalFrom(microseconds: remaining)
            event_add(idleTimer, &tv)
        }
    }
}
