"""A block-list host for the server namespace: http.server's files over https (issue 18).

snitch-lists refuses plain http (anyone on the path could rewrite a list), so the list tests need
a TLS server; its certificate is the test's own, trusted by the updater through SSL_CERT_FILE.
`--redirect PATH=URL` makes PATH answer 302 to URL, as a list host that moved would, or one
that hands its visitors to plain http. Prints "ready" once it listens, then serves until killed.
"""

import argparse
import functools
import http.server
import ssl


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--redirect", action="append", default=[], metavar="PATH=URL")
    args = parser.parse_args()
    redirects = dict(pair.split("=", 1) for pair in args.redirect)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            target = redirects.get(self.path)
            if target is None:
                super().do_GET()  # files, with Last-Modified and a 304 for If-Modified-Since
                return
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(
        (args.bind, args.port), functools.partial(Handler, directory=args.directory)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
