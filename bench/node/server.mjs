// Node's `ws` serving what the compare tool asks of every server:
// `/echo` returns each message as it came, `/chat/` does what the chat
// sample does (a greeting, join and leave notices, every message forwarded
// to the others: text wrapped in JSON, binary unchanged). Listens on
// 127.0.0.1:0, prints `listening on ADDR`, and exits when stdin closes.
// Run by `compare --node-ws` with the system's `node`; `ws` comes from
// `npm install` in this folder (the compare tool runs it).
import http from 'node:http';
import { WebSocketServer } from 'ws';

const server = http.createServer((req, res) => {
  res.writeHead(426).end();
});
// The same limits as the other servers: 1 MiB messages, no compression
// (the bench's clients do not offer it).
const wss = new WebSocketServer({ noServer: true, maxPayload: 1 << 20, perMessageDeflate: false });
const chat = new Set();

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/echo' && url.pathname !== '/chat/') {
    socket.end('HTTP/1.1 404 Not Found\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (url.pathname === '/echo') {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    } else {
      joinChat(ws, url.searchParams.get('name') ?? 'guest');
    }
  });
});

function others(from, data, isBinary) {
  for (const peer of chat) {
    if (peer !== from) peer.send(data, { binary: isBinary });
  }
}

function joinChat(ws, user) {
  others(ws, JSON.stringify({ type: 'join', user }), false);
  chat.add(ws);
  ws.send(JSON.stringify({ type: 'system', data: 'Hello world!' }));
  ws.on('message', (data, isBinary) => {
    const out = isBinary ? data : JSON.stringify({ type: 'message', user, data: data.toString() });
    others(ws, out, isBinary);
  });
  ws.on('close', () => {
    chat.delete(ws);
    others(ws, JSON.stringify({ type: 'leave', user }), false);
  });
}

server.listen(0, '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`listening on ${address}:${port}`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
