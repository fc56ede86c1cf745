'use strict';

// Round 1: PrescriptionToken.create(token, 1, notBefore, notAfter) from the worker's account (an onboarded
// issuer). The token id is the address of a prescription's one-time key; only the address reaches the
// chain, so a fresh random address stands in for it (the key pair itself is generated off-chain by the
// doctor and is not part of what the ledger is asked to do).

const { WorkloadModuleBase } = require('@hyperledger/caliper-core');

class CreateWorkload extends WorkloadModuleBase {
    async initializeWorkloadModule(workerIndex, totalWorkers, roundIndex, roundArguments, sutAdapter, sutContext) {
        await super.initializeWorkloadModule(workerIndex, totalWorkers, roundIndex, roundArguments, sutAdapter, sutContext);
        this.web3 = sutContext.web3;
        this.contract = roundArguments.contract;
        this.notBefore = roundArguments.notBefore;
        this.notAfter = roundArguments.notAfter;
    }

    async submitTransaction() {
        const token = this.web3.utils.toChecksumAddress(this.web3.utils.randomHex(20));
        return this.sutAdapter.sendRequests({
            contract: this.contract,
            verb: 'create',
            args: [token, 1, this.notBefore, this.notAfter],
            readOnly: false,
        });
    }
}

module.exports.createWorkloadModule = () => new CreateWorkload();
