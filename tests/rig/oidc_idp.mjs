// A real OpenID Provider for the console's browser tests: node's `oidc-provider` 9.x with its own login page.
//
// argv[2] is a JSON config: {port, clients: [{client_id, redirect_uris}], users: {name: {password, groups}}}.
// Authorization code only, PKCE (S256) required, state and nonce passed through as the spec says; consent is
// given on the user's behalf after a correct password. Prints {"ready": issuer} on stdout once listening.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const cfg = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${cfg.port}`;
const users = cfg.users;

const provider = new Provider(issuer, {
  clients: cfg.clients.map((c) => ({
    client_id: c.client_id,
    redirect_uris: c.redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'none',
  })),
  pkce: { required: () => true },
  claims: { openid: ['sub', 'preferred_username', 'groups'] },
  conformIdTokenClaims: false, // the gateway reads the user and groups from the ID token
  features: { devInteractions: { enabled: false } },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(_ctx, id) {
    if (!Object.hasOwn(users, id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, groups: users[id].groups };
      },
    };
  },
});

const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

function loginPage(uid, error) {
  return `<!doctype html><html><head><title>Test IdP sign-in</title></head><body>
<h1>Test IdP</h1>${error ? `<p id="idp-error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<label>User <input id="idp-user" name="login" autofocus></label>
<label>Password <input id="idp-password" name="password" type="password"></label>
<button id="idp-submit" type="submit">Sign in</button></form></body></html>`;
}

async function body(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return new URLSearchParams(data);
}

async function interaction(req, res, uid, isLogin) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    if (!isLogin) {
      res.writeHead(200, { 'content-type': 'text/html' }).end(loginPage(uid));
      return;
    }
    const form = await body(req);
    const login = form.get('login') ?? '';
    if (!Object.hasOwn(users, login) || users[login].password !== form.get('password')) {
      res.writeHead(200, { 'content-type': 'text/html' }).end(loginPage(uid, 'wrong user or password'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const handler = provider.callback();
const server = http.createServer((req, res) => {
  const m = /^\/interaction\/([\w-]+)(\/login)?$/.exec(req.url.split('?')[0]);
  if (!m) {
    handler(req, res);
    return;
  }
  interaction(req, res, m[1], Boolean(m[2]) && req.method === 'POST').catch((err) => {
    res.writeHead(400, { 'content-type': 'text/plain' }).end(`interaction failed: ${err.message}`);
  });
});
server.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ ready: issuer }) + '\n');
});
