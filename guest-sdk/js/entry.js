// What ComponentizeJS builds: the controller's app.js (its default export
// is the controller) and the world's exports. `switchyard build` writes
// this beside a copy of the project; a controller author never does.
import app from "./app/app.js";
import { world } from "./switchyard.js";

const exports = world(app);
export const describe = exports.describe;
export const onOpen = exports.onOpen;
export const onMessage = exports.onMessage;
export const onClose = exports.onClose;
export const onError = exports.onError;
