// A real OAuth 2.0 authorization server (oidc-provider) for token-vendor's opaque-session
// tests: its RFC 7662 introspection and RFC 7009 revocation endpoints are the library's
// own. Only /test/* is added, to mint opaque access tokens for a user (as an app's
// identity provider would at sign-in), count introspection calls and slow them down.
//
// Environment: PORT (0 = any free port), INTROSPECTION_CLIENT_ID / _SECRET (the client
// token-vendor introspects with), APP_CLIENT_ID / _SECRET (the app the tokens belong to).
// Prints `LISTENING <port>` on stdout once it accepts connections.
import http from 'node:http';
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is required`);
    process.exit(2);
  }
  return value;
};

const port = Number(process.env.PORT ?? '0');
const introspector = { id: env('INTROSPECTION_CLIENT_ID'), secret: env('INTROSPECTION_CLIENT_SECRET') };
const app = { id: env('APP_CLIENT_ID'), secret: env('APP_CLIENT_SECRET') };

let introspections = 0;
let delayMs = 0;

const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const { port: bound } = server.address();
  const provider = new Provider(`http://127.0.0.1:${bound}`, {
    clients: [
      {
        client_id: introspector.id,
        client_secret: introspector.secret,
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
      },
      {
        client_id: app.id,
        client_secret: app.secret,
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'openid transcribe streams',
      },
    ],
    scopes: ['openid', 'transcribe', 'streams'],
    // Claims a test asks for (`roles`, `corti_scopes`) go into the token's record and
    // so into its introspection answer.
    extraTokenClaims: async (_ctx, token) => token.testClaims,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));

  provider.use(async (ctx, next) => {
    if (ctx.path === '/token/introspection') {
      introspections += 1;
      if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
      return next();
    }
    if (!ctx.path.startsWith('/test/')) return next();
    if (ctx.method === 'GET' && ctx.path === '/test/introspections') {
      ctx.body = { count: introspections };
      return undefined;
    }
    if (ctx.method === 'POST' && ctx.path === '/test/delay') {
      const body = await readJson(ctx.req);
      delayMs = Number(body.ms ?? 0);
      ctx.body = { delay_ms: delayMs };
      return undefined;
    }
    if (ctx.method === 'POST' && ctx.path === '/test/tokens') {
      // What the app's sign-in would mint: an opaque access token for a user.
      const body = await readJson(ctx.req);
      const client = await provider.Client.find(app.id);
      const token = new provider.AccessToken({
        accountId: body.sub,
        client,
        scope: body.scope ?? 'openid',
        expiresIn: body.expires_in ?? 3600,
      });
      token.testClaims = body.claims ?? undefined;
      ctx.body = { access_token: await token.save() };
      return undefined;
    }
    ctx.status = 404;
    return undefined;
  });

  server.on('request', provider.callback());
  console.log(`LISTENING ${bound}`);
});

function readJson(req) {
  return new Promise((resolve, reject) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { text += chunk; });
    req.on('end', () => {
      try {
        resolve(text ? JSON.parse(text) : {});
      } catch (e) {
        reject(e);
      }
    });
    req.on('error', reject);
  });
}
