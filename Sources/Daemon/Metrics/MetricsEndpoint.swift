// slurm-vmd's Prometheus endpoint: GET /metrics answers the registry's exposition text (Telemetry);
// anything else is 404, any method but GET and HEAD 405. Plain HTTP/1.1 on the configured address,
// served by swift-nio; it reads nothing from a request beyond its head.

import NIOCore
import NIOHTTP1
import NIOPosix
import Support
import Telemetry

public final class MetricsEndpoint: Sendable {
    let channel: Channel
    /// The address it listens on (with the port the kernel chose, for port 0).
    public let address: String

    /// Binds `listen` (HOST:PORT) on `group`.
    public init(listen: String, group: EventLoopGroup) throws {
        guard let (host, port) = HostPort.split(listen) else { throw DaemonError.connection("metrics address '\(listen)' is not HOST:PORT") }
        let boot = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(Handler())
                }
            }
        do { channel = try boot.bind(host: host, port: Int(port)).wait() } catch {
            throw DaemonError.connection("cannot serve metrics on \(listen): \(error)")
        }
        address = "\(host):\(channel.localAddress?.port ?? Int(port))"
    }

    public func close() { try? channel.close().wait() }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head(let head) = unwrapInboundIn(data) else { return }
            let (status, type, body): (HTTPResponseStatus, String, [UInt8])
            let path = String(head.uri.split(separator: "?").first ?? "")
            switch (head.method, path) {
            case (.GET, "/metrics"), (.HEAD, "/metrics"):
                (status, type, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", Telemetry.render())
            case (.GET, _), (.HEAD, _):
                (status, type, body) = (.notFound, "text/plain; charset=utf-8", Array("slurm-vmd serves only /metrics\n".utf8))
            default:
                (status, type, body) = (.methodNotAllowed, "text/plain; charset=utf-8", Array("GET /metrics\n".utf8))
            }
            var headers = HTTPHeaders([("Content-Type", type), ("Content-Length", String(body.count))])
            if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            if head.method != .HEAD {
                context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
            }
            let keep = head.isKeepAlive
            let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in if !keep { ctx.value.close(promise: nil) } }
        }
    }
}
