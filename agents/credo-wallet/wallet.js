// A Credo-TS 0.5.19 holder agent (the agent stack BC Wallet is built on) with a small JSON control API.
//
// It is the patient's wallet as a real second stack next to ACA-Py: it opens out-of-band invitations
// (long `?oob=` URLs or short links), connects over DID Exchange, accepts or declines credential offers,
// answers proof requests with Credo's own automatic credential selection (which skips credentials it
// finds revoked on the ledger) and records revocation notifications. Nothing here imitates a wallet:
// every decision below is Credo's, except what a user would decide (accept or decline), which the
// mode setting stands in for.
//
//   node wallet.js --control-port P --inbound-port Q --data-dir DIR --genesis-file FILE --indy-namespace NS
//                  [--label L] [--host 127.0.0.1] [--log-level info]
//   env: CREDO_WALLET_KEY (the wallet's key), LIB_ASKAR_PATH, LIB_ANONCREDS_PATH, LIB_INDY_VDR_PATH
//
// Control API (JSON, on host:control-port only):
//   GET  /health                  {ok, label, inbound_url, mode}
//   POST /invitations {url}       receive an invitation; waits (up to timeout_s, default 20) for a connection
//   GET  /connections             DIDComm connections
//   GET  /credentials             credential exchanges with attributes, cred def id and revocation notice
//   GET  /proofs                  presentation exchanges, what this wallet answered and problem reports
//   GET  /mode, POST /mode {"offers": "accept"|"decline", "proofs": "accept"|"decline"}
// Logs go to stdout, one line per entry (the process manager sends stdout to the wallet's log file).

import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { inspect, parseArgs } from 'node:util'
import { createRequire } from 'node:module'

// The Credo packages are CommonJS; require() keeps their exports exactly as published.
const require = createRequire(import.meta.url)
const core = require('@credo-ts/core')
const { agentDependencies, HttpInboundTransport } = require('@credo-ts/node')
const { AskarModule } = require('@credo-ts/askar')
const {
  AnonCredsModule, AnonCredsCredentialFormatService, LegacyIndyCredentialFormatService,
  AnonCredsProofFormatService, LegacyIndyProofFormatService, AnonCredsCredentialMetadataKey,
  AnonCredsHolderServiceSymbol,
} = require('@credo-ts/anoncreds')
const { IndyVdrModule, IndyVdrAnonCredsRegistry, IndyVdrSovDidResolver, IndyVdrIndyDidResolver } =
  require('@credo-ts/indy-vdr')
const { askar } = require('@openwallet-foundation/askar-nodejs')
const { anoncreds } = require('@hyperledger/anoncreds-nodejs')
const { indyVdr } = require('@hyperledger/indy-vdr-nodejs')
const express = require('express')

const {
  Agent, BaseLogger, LogLevel, HttpOutboundTransport, ConnectionsModule, CredentialsModule, ProofsModule,
  DidsModule, PeerDidResolver, KeyDidResolver, V2CredentialProtocol, V2ProofProtocol, AutoAcceptCredential,
  AutoAcceptProof, CredentialEventTypes, ProofEventTypes, CredentialState, ProofState,
} = core

const { values: args } = parseArgs({
  options: {
    'control-port': { type: 'string', default: process.env.CREDO_CONTROL_PORT },
    'inbound-port': { type: 'string', default: process.env.CREDO_INBOUND_PORT },
    host: { type: 'string', default: '127.0.0.1' },
    label: { type: 'string', default: 'Credo wallet' },
    'data-dir': { type: 'string' },
    'genesis-file': { type: 'string' },
    'indy-namespace': { type: 'string' },
    'log-level': { type: 'string', default: 'info' },
  },
})
for (const required of ['control-port', 'inbound-port', 'data-dir', 'genesis-file', 'indy-namespace']) {
  if (!args[required]) {
    console.error(`credo-wallet: --${required} is required`)
    process.exit(2)
  }
}
const walletKey = process.env.CREDO_WALLET_KEY
if (!walletKey) {
  console.error('credo-wallet: CREDO_WALLET_KEY is not set')
  process.exit(2)
}
const HOST = args.host
const CONTROL_PORT = Number(args['control-port'])
const INBOUND_PORT = Number(args['inbound-port'])
const INBOUND_URL = `http://${HOST}:${INBOUND_PORT}`
const DATA_DIR = path.resolve(args['data-dir'])
const ERX_META = 'erx/answer' // what this wallet did about an exchange (record metadata)

// -- logging: one line per entry ------------------------------------------------------------------
class LineLogger extends BaseLogger {
  write(level, message, data) {
    if (!this.isEnabled(level)) return
    const extra = data === undefined ? '' : ' ' + inspect(data, { depth: 4, breakLength: Infinity, compact: true })
    process.stdout.write(`${new Date().toISOString()} ${LogLevel[level].toUpperCase()} ${message}${extra}\n`)
  }
  test(m, d) { this.write(LogLevel.test, m, d) }
  trace(m, d) { this.write(LogLevel.trace, m, d) }
  debug(m, d) { this.write(LogLevel.debug, m, d) }
  info(m, d) { this.write(LogLevel.info, m, d) }
  warn(m, d) { this.write(LogLevel.warn, m, d) }
  error(m, d) { this.write(LogLevel.error, m, d) }
  fatal(m, d) { this.write(LogLevel.fatal, m, d) }
}
const logLevel = LogLevel[args['log-level']] ?? LogLevel.info
const logger = new LineLogger(logLevel)

// -- the agent ------------------------------------------------------------------------------------
class WalletFileSystem extends agentDependencies.FileSystem {
  constructor() {
    super({ baseDataPath: path.join(DATA_DIR, 'data'), baseCachePath: path.join(DATA_DIR, 'cache'),
      baseTempPath: path.join(DATA_DIR, 'tmp') })
  }
}

function buildAgent() {
  const genesisTransactions = fs.readFileSync(args['genesis-file'], 'utf8')
  return new Agent({
    config: {
      label: args.label,
      walletConfig: { id: 'credo-wallet', key: walletKey },
      endpoints: [INBOUND_URL],
      logger,
      autoUpdateStorageOnStartup: true,
    },
    dependencies: { ...agentDependencies, FileSystem: WalletFileSystem },
    modules: {
      askar: new AskarModule({ ariesAskar: askar }),
      anoncreds: new AnonCredsModule({ registries: [new IndyVdrAnonCredsRegistry()], anoncreds }),
      indyVdr: new IndyVdrModule({
        indyVdr,
        networks: [{ genesisTransactions, indyNamespace: args['indy-namespace'], isProduction: false,
          connectOnStartup: true }],
      }),
      dids: new DidsModule({
        resolvers: [new PeerDidResolver(), new KeyDidResolver(), new IndyVdrSovDidResolver(),
          new IndyVdrIndyDidResolver()],
      }),
      connections: new ConnectionsModule({ autoAcceptConnections: true }),
      // ContentApproved: Credo acknowledges a credential that matches the offer it accepted and never
      // answers an offer or a request on its own; the handlers below decide like a user would.
      credentials: new CredentialsModule({
        autoAcceptCredentials: AutoAcceptCredential.ContentApproved,
        credentialProtocols: [new V2CredentialProtocol({
          credentialFormats: [new LegacyIndyCredentialFormatService(), new AnonCredsCredentialFormatService()],
        })],
      }),
      proofs: new ProofsModule({
        autoAcceptProofs: AutoAcceptProof.ContentApproved,
        proofProtocols: [new V2ProofProtocol({
          proofFormats: [new LegacyIndyProofFormatService(), new AnonCredsProofFormatService()],
        })],
      }),
    },
  })
}

const agent = buildAgent()
const mode = { offers: 'accept', proofs: 'accept' }

// The inbound DIDComm endpoint listens on HOST only (Credo's transport would listen on all interfaces).
const inboundApp = express()
const listen = inboundApp.listen.bind(inboundApp)
inboundApp.listen = (port, ...rest) => listen(port, HOST, ...rest)
agent.registerInboundTransport(new HttpInboundTransport({ app: inboundApp, port: INBOUND_PORT }))
agent.registerOutboundTransport(new HttpOutboundTransport())

async function remember(api, recordId, answer) {
  const record = await api.getById(recordId)
  record.metadata.set(ERX_META, { ...answer, at: new Date().toISOString() })
  await api.update(record)
}

async function onOffer(record) {
  if (mode.offers === 'decline') {
    // what a wallet app does when its user taps "decline": a problem report, then `declined`
    await agent.credentials.declineOffer(record.id, { sendProblemReport: true })
    await remember(agent.credentials, record.id, { action: 'declined' })
    logger.info(`declined credential offer ${record.id}`)
    return
  }
  await agent.credentials.acceptOffer({ credentialRecordId: record.id })
  await remember(agent.credentials, record.id, { action: 'accepted' })
  logger.info(`accepted credential offer ${record.id}`)
}

async function onProofRequest(record) {
  if (mode.proofs === 'decline') {
    await agent.proofs.declineRequest({ proofRecordId: record.id, sendProblemReport: true })
    await remember(agent.proofs, record.id, { action: 'declined', problem_report: 'Request declined' })
    logger.info(`declined proof request ${record.id}`)
    return
  }
  let proofFormats
  try {
    // Credo's automatic selection: non-revoked credentials first, revoked ones filtered out
    ;({ proofFormats } = await agent.proofs.selectCredentialsForRequest({ proofRecordId: record.id }))
  } catch (error) {
    // nothing in this wallet answers the request: say so, the way a wallet app declines it
    const description = error?.message ?? String(error)
    await agent.proofs.declineRequest({ proofRecordId: record.id, sendProblemReport: true,
      problemReportDescription: description })
    await remember(agent.proofs, record.id, { action: 'no_matching_credential', problem_report: description })
    logger.warn(`cannot answer proof request ${record.id}: ${description}`)
    return
  }
  await agent.proofs.acceptRequest({ proofRecordId: record.id, proofFormats })
  const selected = Object.values(proofFormats?.anoncreds?.attributes ?? proofFormats?.indy?.attributes ?? {})
    .map((a) => a.credentialId)
  await remember(agent.proofs, record.id, { action: 'presented', credential_ids: [...new Set(selected)] })
  logger.info(`presented proof ${record.id} from credential(s) ${[...new Set(selected)].join(', ')}`)
}

function handled(what, handler) {
  return (event) => {
    handler(event).catch((error) => logger.error(`${what} failed: ${error?.message}`, { error }))
  }
}

agent.events.on(CredentialEventTypes.CredentialStateChanged, handled('credential offer', async ({ payload }) => {
  if (payload.credentialRecord.state === CredentialState.OfferReceived) await onOffer(payload.credentialRecord)
}))
agent.events.on(ProofEventTypes.ProofStateChanged, handled('proof request', async ({ payload }) => {
  if (payload.proofRecord.state === ProofState.RequestReceived) await onProofRequest(payload.proofRecord)
}))
agent.events.on(CredentialEventTypes.RevocationNotificationReceived, ({ payload }) => {
  logger.info(`revocation notification for credential exchange ${payload.credentialRecord.id}`)
})

// -- views ----------------------------------------------------------------------------------------
const iso = (date) => (date ? new Date(date).toISOString() : null)

function connectionView(c) {
  return { id: c.id, state: c.state, role: c.role, their_label: c.theirLabel ?? null, did: c.did ?? null,
    their_did: c.theirDid ?? null, out_of_band_id: c.outOfBandId ?? null, protocol: c.protocol ?? null,
    created_at: iso(c.createdAt) }
}

async function credentialView(r) {
  const meta = r.metadata.get(AnonCredsCredentialMetadataKey) ?? {}
  const stored = r.credentials?.[0]
  let attributes = Object.fromEntries((r.credentialAttributes ?? []).map((a) => [a.name, a.value]))
  let info = null
  if (stored) {
    try {
      // identifiers as the issuer wrote them (ACA-Py: legacy unqualified); Credo's W3C storage also
      // holds them qualified (did:indy:<namespace>:...)
      info = await agent.dependencyManager.resolve(AnonCredsHolderServiceSymbol)
        .getCredential(agent.context, { id: stored.credentialRecordId, useUnqualifiedIdentifiersIfPresent: true })
      // AnonCreds raw values are strings; Credo's W3C storage gives integer-looking ones back as numbers
      attributes = Object.fromEntries(Object.entries(info.attributes).map(([k, v]) => [k, String(v)]))
    } catch (error) {
      logger.debug(`no AnonCreds credential ${stored.credentialRecordId}: ${error?.message}`)
    }
  }
  let offered = null
  if (!info) {
    // not stored (an open or declined offer): what the offer message proposed
    try {
      const data = await agent.credentials.getFormatData(r.id)
      offered = data.offer?.anoncreds ?? data.offer?.indy ?? null
      if (!Object.keys(attributes).length) {
        attributes = Object.fromEntries((data.offerAttributes ?? []).map((a) => [a.name, a.value]))
      }
    } catch (error) {
      logger.debug(`no format data for credential exchange ${r.id}: ${error?.message}`)
    }
  }
  const notice = r.revocationNotification
  return {
    id: r.id, state: r.state, thread_id: r.threadId, connection_id: r.connectionId ?? null,
    created_at: iso(r.createdAt), error_message: r.errorMessage ?? null,
    credential_id: stored?.credentialRecordId ?? null,
    cred_def_id: info?.credentialDefinitionId ?? meta.credentialDefinitionId ?? offered?.cred_def_id ?? null,
    schema_id: info?.schemaId ?? meta.schemaId ?? offered?.schema_id ?? null,
    rev_reg_id: info?.revocationRegistryId ?? meta.revocationRegistryId ?? null,
    cred_rev_id: info?.credentialRevocationId ?? meta.credentialRevocationId ?? null,
    attributes,
    revoked: Boolean(notice),
    revocation_notification: notice ? { received_at: iso(notice.revocationDate), comment: notice.comment ?? null }
      : null,
    answer: r.metadata.get(ERX_META) ?? null,
  }
}

function proofView(r) {
  return { id: r.id, state: r.state, thread_id: r.threadId, connection_id: r.connectionId ?? null,
    created_at: iso(r.createdAt), error_message: r.errorMessage ?? null, answer: r.metadata.get(ERX_META) ?? null }
}

const byCreated = (a, b) => new Date(a.createdAt) - new Date(b.createdAt)

// -- control API ----------------------------------------------------------------------------------
class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status }
}

async function readJson(req) {
  const chunks = []
  for await (const chunk of req) chunks.push(chunk)
  const text = Buffer.concat(chunks).toString('utf8')
  if (!text.trim()) return {}
  try {
    const body = JSON.parse(text)
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object')
    return body
  } catch {
    throw new HttpError(400, 'the body must be a JSON object')
  }
}

async function receiveInvitation(body) {
  if (typeof body.url !== 'string' || !/^https?:\/\//.test(body.url)) {
    throw new HttpError(400, 'url: an http(s) invitation URL is required')
  }
  const timeoutMs = Math.min(Number(body.timeout_s ?? 20), 60) * 1000
  let received
  try {
    // long `?oob=` URLs are decoded; short links are fetched with `Accept: application/json`
    received = await agent.oob.receiveInvitationFromUrl(body.url, {
      autoAcceptInvitation: true, autoAcceptConnection: true, reuseConnection: true,
    })
  } catch (error) {
    throw new HttpError(422, `could not open the invitation: ${error?.message ?? error}`)
  }
  let connection = received.connectionRecord
  if (connection && !connection.isReady) {
    try {
      connection = await agent.connections.returnWhenIsConnected(connection.id, { timeoutMs })
    } catch (error) {
      connection = await agent.connections.getById(connection.id)
      logger.warn(`connection ${connection.id} not completed in ${timeoutMs} ms: ${error?.message}`)
    }
  }
  return {
    out_of_band_id: received.outOfBandRecord.id,
    out_of_band_state: received.outOfBandRecord.state,
    connection: connection ? connectionView(connection) : null,
  }
}

function setMode(body) {
  for (const [key, value] of Object.entries(body)) {
    if (!(key in mode)) throw new HttpError(400, `unknown mode setting ${key}`)
    if (value !== 'accept' && value !== 'decline') throw new HttpError(400, `${key}: "accept" or "decline"`)
  }
  Object.assign(mode, body)
  logger.info(`mode: offers ${mode.offers}, proofs ${mode.proofs}`)
  return { ...mode }
}

const routes = {
  'GET /health': async () => ({ ok: agent.isInitialized, label: args.label, inbound_url: INBOUND_URL, mode }),
  'GET /mode': async () => ({ ...mode }),
  'POST /mode': async (req) => setMode(await readJson(req)),
  'POST /invitations': async (req) => receiveInvitation(await readJson(req)),
  'GET /connections': async () => (await agent.connections.getAll()).sort(byCreated).map(connectionView),
  'GET /credentials': async () =>
    Promise.all((await agent.credentials.getAll()).sort(byCreated).map(credentialView)),
  'GET /proofs': async () => (await agent.proofs.getAll()).sort(byCreated).map(proofView),
}

const server = http.createServer(async (req, res) => {
  const route = routes[`${req.method} ${new URL(req.url, 'http://x').pathname}`]
  let status = 200
  let answer
  try {
    if (!route) throw new HttpError(404, `no route ${req.method} ${req.url}`)
    answer = await route(req)
  } catch (error) {
    status = error instanceof HttpError ? error.status : 500
    answer = { error: error?.message ?? String(error) }
    if (status === 500) logger.error(`control API ${req.method} ${req.url} failed`, { error })
  }
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(answer))
})

async function main() {
  fs.mkdirSync(DATA_DIR, { recursive: true })
  await agent.initialize()
  if ((await agent.modules.anoncreds.getLinkSecretIds()).length === 0) {
    await agent.modules.anoncreds.createLinkSecret({ setAsDefault: true })
  }
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(CONTROL_PORT, HOST, resolve)
  })
  logger.info(`credo wallet "${args.label}" ready: control http://${HOST}:${CONTROL_PORT}, DIDComm ${INBOUND_URL}, `
    + `ledger ${args['indy-namespace']}`)
}

let stopping = false
async function stop(signal) {
  if (stopping) return
  stopping = true
  logger.info(`${signal}: shutting down`)
  server.close()
  try {
    await agent.shutdown()
  } catch (error) {
    logger.error(`shutdown failed: ${error?.message}`)
  }
  process.exit(0)
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))

main().catch((error) => {
  logger.fatal(`start-up failed: ${error?.message}`, { error })
  process.exit(1)
})
