"""A block-list host for the server namespace: http.server's files over https (issue 18).

snitch-lists refuses plain http (anyone on the path could rewrite a list), so the list tests need
a TLS server; its certificate is the test's own, trusted by the updater through SSL_CERT_FILE.
Prints "ready" once it listens, then serves until killed.
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
    args = parser.parse_args()
    # Files, with Last-Modified, and a 304 for If-Modified-Since.
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.directory)
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
