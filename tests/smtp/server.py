"""A real SMTP server for vpswatch's email tests, built on aiosmtpd.

Listens on 127.0.0.1 only, prints "LISTENING <port>" once it accepts connections, and
writes every accepted message to --maildir as one JSON file (envelope + raw data) before
answering 250, so a test that saw the 250 can read the file. Modes: plain ("none"),
STARTTLS required ("starttls") or TLS from the first byte ("tls"). With --user, AUTH is
required and checked against the password in the SMTP_TEST_PASSWORD environment variable.

Refusals, for tests of what the client does with them: --reject-rcpt ADDR answers 550 to
RCPT TO ADDR and --defer-rcpt ADDR 450; --reject-data TEXT answers 554 to the end of DATA
of a message whose content contains TEXT and --defer-data TEXT 451. Each option may repeat.
With --defer-times N a deferral applies only the first N times for its address or text
(default: always). Every refusal is appended to <maildir>/refusals.log as a JSON line
{"stage", "reply", "rcpt" or "message_id"}, so a test can count the attempts.
"""

import argparse
import asyncio
import json
import logging
import os
import ssl
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def header(content, name):
    for line in content.split("\r\n"):
        if not line:
            break
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return ""


class Recorder:
    def __init__(self, maildir, args):
        self.maildir = maildir
        self.count = 0
        self.args = args
        self.deferred = {}

    def refuse(self, reply, **what):
        with open(os.path.join(self.maildir, "refusals.log"), "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(reply=reply, **what)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return reply

    def defer_now(self, key):
        limit = self.args.defer_times
        n = self.deferred.get(key, 0)
        if limit and n >= limit:
            return False
        self.deferred[key] = n + 1
        return True

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.args.reject_rcpt:
            return self.refuse(
                "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address,
                stage="RCPT",
                rcpt=address,
            )
        if address in self.args.defer_rcpt and self.defer_now(("rcpt", address)):
            return self.refuse(
                "450 4.2.1 <%s>: Mailbox busy, try again later" % address,
                stage="RCPT",
                rcpt=address,
            )
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content.decode("utf-8", "replace")
        message_id = header(content, "Message-ID")
        for text in self.args.reject_data:
            if text in content:
                return self.refuse(
                    "554 5.7.1 Message rejected: content matches a test rule",
                    stage="DATA",
                    message_id=message_id,
                )
        for text in self.args.defer_data:
            if text in content and self.defer_now(("data", text)):
                return self.refuse(
                    "451 4.3.0 Temporary failure, try again later",
                    stage="DATA",
                    message_id=message_id,
                )
        self.count += 1
        name = "%d-%06d" % (os.getpid(), self.count)
        tmp = os.path.join(self.maildir, "." + name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "data": envelope.original_content.decode("utf-8", "replace"),
                },
                f,
            )
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.maildir, name + ".json"))
        return "250 2.0.0 OK stored as " + name


class Authenticator:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        # handled=False: aiosmtpd answers 535 itself on failure.
        return AuthResult(success=ok, handled=False)


async def main():
    if os.environ.get("SMTP_TEST_DEBUG"):
        logging.basicConfig(level=logging.DEBUG)
    else:
        # aiosmtpd's deprecation and "AUTH without STARTTLS" notices are noise here.
        warnings.simplefilter("ignore")
        logging.getLogger("mail.log").setLevel(logging.ERROR)
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--maildir", required=True)
    p.add_argument("--mode", choices=["none", "starttls", "tls"], default="none")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--user")
    p.add_argument("--reject-rcpt", action="append", default=[])
    p.add_argument("--defer-rcpt", action="append", default=[])
    p.add_argument("--reject-data", action="append", default=[])
    p.add_argument("--defer-data", action="append", default=[])
    p.add_argument("--defer-times", type=int, default=0)
    args = p.parse_args()

    ctx = None
    if args.mode != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    auth = None
    if args.user:
        auth = Authenticator(args.user, os.environ["SMTP_TEST_PASSWORD"])
    handler = Recorder(args.maildir, args)

    def factory():
        return SMTP(
            handler,
            hostname="smtp.test",
            tls_context=ctx if args.mode == "starttls" else None,
            require_starttls=args.mode == "starttls",
            authenticator=auth,
            auth_required=auth is not None,
            auth_require_tls=args.mode == "starttls",
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory,
        host="127.0.0.1",
        port=args.port,
        ssl=ctx if args.mode == "tls" else None,
    )
    port = server.sockets[0].getsockname()[1]
    print("LISTENING %d" % port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
