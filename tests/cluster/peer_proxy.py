"""Peer-traffic proxies that cut one etcd member off from its peers while its clients still reach it:
the minority partition of the design study (§3.3), on loopback ports only.

Every member advertises its peer URL through a proxy of its own, so all peer traffic passes one. A
proxy knows which member opened a connection from the process that owns its other end (the socket's
inode in /proc/net/tcp, among the members' file descriptors): not every peer request names its sender
(a follower forwarding a lease keepalive to the leader does not), so headers would not do. Client
traffic never passes here."""

from __future__ import annotations

import asyncio
import os
import threading


class PeerProxies:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="etcd-peer-proxies", daemon=True)
        self.thread.start()
        self.isolated: set[str] = set()  # member names
        self.pids: dict[str, int] = {}  # member name -> its process, kept current by the harness
        self._servers = []
        self._links: list[tuple[str, str | None, asyncio.StreamWriter, asyncio.StreamWriter]] = []

    def add(self, name: str, listen_port: int, member_port: int) -> None:
        """Forward 127.0.0.1:listen_port to the member `name`'s peer port."""
        async def serve():
            server = await asyncio.start_server(lambda r, w: self._link(name, member_port, r, w), "127.0.0.1",
                                                listen_port)
            self._servers.append(server)
        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def isolate(self, name: str) -> None:
        def cut():
            self.isolated.add(name)
            for target, sender, a, b in list(self._links):
                if name in (target, sender):
                    a.close()
                    b.close()
        self.loop.call_soon_threadsafe(cut)

    def heal(self, name: str) -> None:
        self.loop.call_soon_threadsafe(self.isolated.discard, name)

    def close(self) -> None:
        async def stop():
            for server in self._servers:
                server.close()
            for _t, _s, a, b in self._links:
                a.close()
                b.close()
            links = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in links:
                task.cancel()
            await asyncio.gather(*links, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _opener(self, peer_port: int, local_port: int) -> str | None:
        """The member whose process holds the client end of 127.0.0.1:peer_port -> :local_port."""
        wanted = f"0100007F:{peer_port:04X} 0100007F:{local_port:04X}"
        inode = None
        with open("/proc/net/tcp") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 9 and f"{fields[1]} {fields[2]}" == wanted:
                    inode = fields[9]
        if inode is None:
            return None
        for name, pid in self.pids.items():
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return name
            except OSError:
                continue  # the process is gone
        return None

    async def _link(self, target: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer_port, local_port = writer.get_extra_info("peername")[1], writer.get_extra_info("sockname")[1]
        sender = self._opener(peer_port, local_port)
        if target in self.isolated or sender in self.isolated:
            writer.close()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        link = (target, sender, writer, upstream)
        self._links.append(link)
        try:
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, writer))
        finally:
            self._links.remove(link)
            writer.close()
            upstream.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
