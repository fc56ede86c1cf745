'use strict';

// Round 2: PrescriptionToken.spend(token, 1, signature) from the worker's account (an onboarded dispenser).
// The tokens were created before the run (createBatch) and each one's one-time key signed, off-chain, the
// EIP-712 Spend(token, dispenser = this worker's account, remaining = 1) authorisation. The file maps each
// worker account (lower-case address) to its own list of [token, signature] pairs, so no two workers ever
// spend the same token and the connector's single fromAddress is the authorised dispenser.

const fs = require('fs');
const { WorkloadModuleBase } = require('@hyperledger/caliper-core');

class SpendWorkload extends WorkloadModuleBase {
    async initializeWorkloadModule(workerIndex, totalWorkers, roundIndex, roundArguments, sutAdapter, sutContext) {
        await super.initializeWorkloadModule(workerIndex, totalWorkers, roundIndex, roundArguments, sutAdapter, sutContext);
        this.contract = roundArguments.contract;
        const all = JSON.parse(fs.readFileSync(roundArguments.spendsFile, 'utf8'));
        const sender = String(sutContext.fromAddress || '').toLowerCase();
        this.pairs = all[sender];
        if (!Array.isArray(this.pairs) || this.pairs.length === 0) {
            throw new Error(`no pre-signed spends for worker ${workerIndex} (account ${sender}) in ${roundArguments.spendsFile}`);
        }
        this.next = 0;
    }

    async submitTransaction() {
        if (this.next >= this.pairs.length) {
            throw new Error(`worker ${this.workerIndex} ran out of pre-signed spends (${this.pairs.length})`);
        }
        const [token, signature] = this.pairs[this.next++];
        return this.sutAdapter.sendRequests({
            contract: this.contract,
            verb: 'spend',
            args: [token, 1, signature],
            readOnly: false,
        });
    }
}

module.exports.createWorkloadModule = () => new SpendWorkload();
