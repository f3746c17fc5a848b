"""The peer MLLP servers careloop is compared with, run as subprocesses by the benches.

* ``python-hl7``: python-hl7's asyncio server (``hl7.mllp.start_hl7_server``); parses each
  message and answers ``create_ack()``; stores nothing.
* ``hl7apy``: hl7apy's ``MLLPServer`` (threaded; one message per connection); parses with
  ``parse_message`` and answers an AA; stores nothing.

Usage: ``python bench/peers.py python-hl7|hl7apy PORT``.
"""
from __future__ import annotations

import asyncio
import sys


def python_hl7(port: int) -> None:
    import hl7
    import hl7.mllp

    async def on_connection(reader: "hl7.mllp.HL7StreamReader", writer: "hl7.mllp.HL7StreamWriter") -> None:
        try:
            while not writer.is_closing():
                msg = await reader.readmessage()
                writer.writemessage(msg.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def main() -> None:
        await hl7.mllp.start_hl7_server(on_connection, host="127.0.0.1", port=port)
        await asyncio.Event().wait()

    asyncio.run(main())


def hl7apy_server(port: int) -> None:
    from hl7apy.mllp import AbstractHandler, MLLPServer
    from hl7apy.parser import parse_message

    class Ack(AbstractHandler):  # type: ignore[misc]
        def reply(self) -> str:
            msg = parse_message(self.incoming_message, find_groups=False)
            control = msg.msh.msh_10.to_er7()
            return f"\x0bMSH|^~\\&|CL|CL|||||ACK|{control}|P|2.5.1\rMSA|AA|{control}\r\x1c\r"

    MLLPServer("127.0.0.1", port, {"SIU^S12^SIU_S12": (Ack,)}).serve_forever()


if __name__ == "__main__":
    which, port = sys.argv[1], int(sys.argv[2])
    {"python-hl7": python_hl7, "hl7apy": hl7apy_server}[which](port)
