// What `@corti/sdk` imports as "ws" in Node is the browser's own WebSocket here.
export const WebSocket = globalThis.WebSocket;
export default globalThis.WebSocket;
