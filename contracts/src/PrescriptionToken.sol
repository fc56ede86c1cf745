// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Prescription redemption tokens (double-redemption prevention only)
/// @notice A token is keyed by the address of a prescription's one-time key pair
/// (pk_presc). The chain stores counts, a validity window, a cancel flag and the
/// issuing doctor's account: nothing about the patient or the prescription content.
/// Spending needs an EIP-712 signature of the one-time key, sent by an onboarded
/// pharmacy's own account, so one-time accounts never need funds.
///
/// It also holds the national register of trusted prescribers, governed by the admin (the health
/// authority): each practice is listed by its public Indy DID (the first segment of its AnonCreds
/// credential definition id) with the chain account it creates tokens from. Pharmacies read the
/// register to decide whether a presented prescription's issuer is trusted, so a practice onboarded
/// here is accepted by every pharmacy at once. The register holds only public identifiers of
/// practices (their DIDs are public on the Indy ledger) and their accounts.
///
/// Offboarding a practice (removePrescriber) revokes its issuer role in the same transaction: it can
/// no longer create or cancel tokens. Tokens it created earlier stay on chain untouched and remain
/// spendable here: spend() does not judge trust. Pharmacies refuse them because the register says the
/// practice is no longer trusted (isTrustedPrescriber), which keeps the trust decision in one place
/// and lets the authority re-admit a practice without its tokens having been destroyed meanwhile.
contract PrescriptionToken {
    /// Exactly one storage slot (20 + 2 + 4 + 4 + 1 bytes). uint32 timestamps last until 2106.
    struct Token {
        address issuer;
        uint16 remaining;
        uint32 notBefore;
        uint32 notAfter;
        bool cancelled;
    }

    struct TokenSpec {
        address token;
        uint16 redemptions;
        uint32 notBefore;
        uint32 notAfter;
    }

    /// A practice in the register. Exactly one storage slot (20 + 4 + 1 + 4 bytes).
    struct Practice {
        address account; // address(0): never registered
        uint32 since; // block time of its latest (re-)admission
        bool active;
        uint32 index; // its position in _dids
    }

    /// One row of the register, as prescribers() returns it.
    struct PrescriberEntry {
        string did;
        address account;
        uint32 since;
        bool active;
    }

    bytes32 public constant SPEND_TYPEHASH =
        keccak256("Spend(address token,address dispenser,uint16 remaining)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("ErxPrescriptionToken");
    bytes32 private constant VERSION_HASH = keccak256("1");
    // secp256k1n / 2: higher s values are the malleable twin of a valid signature.
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    /// Longest DID the register takes, in bytes. Unqualified Indy DIDs are 21-22 (16-byte) or
    /// 43-44 (32-byte) base58 characters.
    uint256 public constant MAX_DID_LENGTH = 64;
    // Bit c is set for each character c of the base58 (Bitcoin) alphabet that Indy DIDs use.
    uint256 private constant BASE58_ALPHABET = 0x07FFEFFE07FF7DFE03FE000000000000;

    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    address public admin;
    address public pendingAdmin;
    mapping(address => bool) public isIssuer;
    mapping(address => bool) public isDispenser;
    mapping(address => Token) private _tokens;
    // ---- the register of trusted prescribers (after the token state: its slots stay where they were)
    mapping(string => Practice) private _practices;
    string[] private _dids; // every DID ever registered, in order of first registration
    mapping(address => uint256) private _activeDidOf; // account => 1 + index of the active DID it belongs to

    event AdminTransferStarted(address indexed currentAdmin, address indexed pendingAdmin);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    event IssuerAdded(address indexed account);
    event IssuerRemoved(address indexed account);
    event DispenserAdded(address indexed account);
    event DispenserRemoved(address indexed account);
    event TokenCreated(
        address indexed token, address indexed issuer, uint16 redemptions, uint32 notBefore, uint32 notAfter
    );
    event TokenSpent(address indexed token, address indexed dispenser, uint16 remaining);
    event TokenCancelled(address indexed token, address indexed issuer);
    event PrescriberAdded(string did, address indexed account);
    event PrescriberRemoved(string did, address indexed account);

    error NotAdmin(address caller);
    error NotPendingAdmin(address caller);
    error NotIssuer(address caller);
    error NotDispenser(address caller);
    error NotTokenIssuer(address token, address caller);
    error ZeroAddress();
    error InvalidRedemptions(address token);
    error InvalidValidity(address token, uint32 notBefore, uint32 notAfter);
    error TokenExists(address token);
    error UnknownToken(address token);
    error Cancelled(address token);
    error NotYetValid(address token, uint32 notBefore);
    error Expired(address token, uint32 notAfter);
    error AlreadySpent(address token);
    error StaleSignature(address token, uint16 remaining);
    error BadSignature(address token);
    error InvalidDid(string did);
    error PrescriberAlreadyActive(string did, address account);
    error AccountInUse(address account, string did);
    error UnknownPrescriber(string did);
    error PrescriberInactive(string did);
    error IndexOutOfRange(uint256 index, uint256 count);

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    modifier onlyIssuer() {
        if (!isIssuer[msg.sender]) revert NotIssuer(msg.sender);
        _;
    }

    modifier onlyDispenser() {
        if (!isDispenser[msg.sender]) revert NotDispenser(msg.sender);
        _;
    }

    constructor() {
        admin = msg.sender;
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
        emit AdminTransferred(address(0), msg.sender);
    }

    // ---- governance -------------------------------------------------------------

    /// Step 1 of 2; newAdmin completes it with acceptAdmin. address(0) withdraws a pending offer.
    function transferAdmin(address newAdmin) external onlyAdmin {
        pendingAdmin = newAdmin;
        emit AdminTransferStarted(msg.sender, newAdmin);
    }

    function acceptAdmin() external {
        if (msg.sender != pendingAdmin) revert NotPendingAdmin(msg.sender);
        emit AdminTransferred(admin, msg.sender);
        admin = msg.sender;
        pendingAdmin = address(0);
    }

    function addIssuer(address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        isIssuer[account] = true;
        emit IssuerAdded(account);
    }

    function removeIssuer(address account) external onlyAdmin {
        isIssuer[account] = false;
        emit IssuerRemoved(account);
    }

    function addDispenser(address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        isDispenser[account] = true;
        emit DispenserAdded(account);
    }

    function removeDispenser(address account) external onlyAdmin {
        isDispenser[account] = false;
        emit DispenserRemoved(account);
    }

    // ---- register of trusted prescribers (admin) ------------------------------------
    //
    // The register owns the issuer role of its accounts: addPrescriber grants isIssuer and
    // removePrescriber revokes it, each in the same transaction as the register change. addIssuer and
    // removeIssuer still act on any account and leave the register alone (unregistered issuers such as
    // benchmark accounts); offboard a registered practice with removePrescriber, not removeIssuer.

    /// Admits a practice, or re-admits an offboarded one (possibly with a new account; `since`
    /// restarts). A new account for an active practice is a removal followed by an addition.
    /// @param did the practice's unqualified Indy DID: 1 to MAX_DID_LENGTH base58 characters
    /// @param account the chain account it creates tokens from; not the account of another active practice
    function addPrescriber(string calldata did, address account) external onlyAdmin {
        _checkDid(did);
        if (account == address(0)) revert ZeroAddress();
        Practice storage p = _practices[did];
        if (p.active) revert PrescriberAlreadyActive(did, p.account);
        uint256 holder = _activeDidOf[account];
        if (holder != 0) revert AccountInUse(account, _dids[holder - 1]);
        uint32 index = p.index;
        if (p.account == address(0)) {
            // 2^32 registrations would take more transactions than any chain will ever carry.
            index = uint32(_dids.length);
            _dids.push(did);
        }
        _practices[did] = Practice(account, uint32(block.timestamp), true, index);
        _activeDidOf[account] = uint256(index) + 1;
        isIssuer[account] = true;
        emit IssuerAdded(account);
        emit PrescriberAdded(did, account);
    }

    /// Offboards a practice: marks it inactive and revokes its account's issuer role. Its entry (last
    /// account, since) stays readable; its tokens stay on chain, see the contract's notice.
    function removePrescriber(string calldata did) external onlyAdmin {
        Practice storage p = _practices[did];
        address account = p.account;
        if (account == address(0)) revert UnknownPrescriber(did);
        if (!p.active) revert PrescriberInactive(did);
        p.active = false;
        delete _activeDidOf[account];
        isIssuer[account] = false;
        emit IssuerRemoved(account);
        emit PrescriberRemoved(did, account);
    }

    // ---- tokens -----------------------------------------------------------------

    function create(address token, uint16 redemptions, uint32 notBefore, uint32 notAfter) external onlyIssuer {
        _create(token, redemptions, notBefore, notAfter);
    }

    /// All-or-nothing: one existing or invalid entry reverts the whole batch.
    function createBatch(TokenSpec[] calldata specs) external onlyIssuer {
        for (uint256 i = 0; i < specs.length; ++i) {
            TokenSpec calldata s = specs[i];
            _create(s.token, s.redemptions, s.notBefore, s.notAfter);
        }
    }

    /// @param expectedRemaining the remaining count the signature was made for; it makes every
    /// authorisation single-use, since the count only ever goes down.
    /// @param signature 65-byte (r, s, v) signature of the one-time key over the EIP-712 digest of
    /// Spend(token, msg.sender, expectedRemaining), see spendDigest.
    function spend(address token, uint16 expectedRemaining, bytes calldata signature) external onlyDispenser {
        Token storage t = _tokens[token];
        if (t.issuer == address(0)) revert UnknownToken(token);
        if (t.cancelled) revert Cancelled(token);
        if (block.timestamp < t.notBefore) revert NotYetValid(token, t.notBefore);
        if (block.timestamp > t.notAfter) revert Expired(token, t.notAfter);
        uint16 remaining = t.remaining;
        if (remaining == 0) revert AlreadySpent(token);
        if (expectedRemaining != remaining) revert StaleSignature(token, remaining);
        if (_recover(spendDigest(token, msg.sender, remaining), signature) != token) revert BadSignature(token);
        unchecked {
            t.remaining = remaining - 1;
        }
        emit TokenSpent(token, msg.sender, remaining - 1);
    }

    /// Only the creating issuer, and only while still onboarded.
    function cancel(address token) external onlyIssuer {
        Token storage t = _tokens[token];
        if (t.issuer == address(0)) revert UnknownToken(token);
        if (t.issuer != msg.sender) revert NotTokenIssuer(token, msg.sender);
        if (t.cancelled) revert Cancelled(token);
        if (t.remaining == 0) revert AlreadySpent(token);
        t.cancelled = true;
        emit TokenCancelled(token, msg.sender);
    }

    // ---- views ------------------------------------------------------------------

    /// An unknown token reads as all zeros (issuer == address(0)).
    function getToken(address token) external view returns (Token memory) {
        return _tokens[token];
    }

    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    function spendDigest(address token, address dispenser, uint16 remaining) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(SPEND_TYPEHASH, token, dispenser, remaining));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// Whether the practice with this DID is currently admitted; false for any unknown string.
    function isTrustedPrescriber(string calldata did) external view returns (bool) {
        return _practices[did].active;
    }

    /// An unknown DID reads as all zeros (account == address(0)); an offboarded one keeps its last
    /// account and admission time.
    function prescriber(string calldata did) external view returns (address account, uint32 since, bool active) {
        Practice storage p = _practices[did];
        return (p.account, p.since, p.active);
    }

    /// Number of DIDs ever registered (active or not): the bound of prescriberAt and prescribers.
    function prescriberCount() external view returns (uint256) {
        return _dids.length;
    }

    function prescriberAt(uint256 index)
        external
        view
        returns (string memory did, address account, uint32 since, bool active)
    {
        if (index >= _dids.length) revert IndexOutOfRange(index, _dids.length);
        did = _dids[index];
        Practice storage p = _practices[did];
        return (did, p.account, p.since, p.active);
    }

    /// Up to `limit` entries from position `offset`, in order of first registration (a re-admitted
    /// practice keeps its place); empty past the end. For paging through the register in one call a page.
    function prescribers(uint256 offset, uint256 limit) external view returns (PrescriberEntry[] memory page) {
        uint256 count = _dids.length;
        if (offset >= count) return page;
        uint256 n = count - offset < limit ? count - offset : limit;
        page = new PrescriberEntry[](n);
        for (uint256 i = 0; i < n; ++i) {
            string storage did = _dids[offset + i];
            Practice storage p = _practices[did];
            page[i] = PrescriberEntry(did, p.account, p.since, p.active);
        }
    }

    // ---- internals --------------------------------------------------------------

    function _create(address token, uint16 redemptions, uint32 notBefore, uint32 notAfter) private {
        if (token == address(0)) revert ZeroAddress();
        if (redemptions == 0) revert InvalidRedemptions(token);
        if (notBefore > notAfter) revert InvalidValidity(token, notBefore, notAfter);
        if (_tokens[token].issuer != address(0)) revert TokenExists(token);
        _tokens[token] = Token(msg.sender, redemptions, notBefore, notAfter, false);
        emit TokenCreated(token, msg.sender, redemptions, notBefore, notAfter);
    }

    function _checkDid(string calldata did) private pure {
        bytes calldata b = bytes(did);
        if (b.length == 0 || b.length > MAX_DID_LENGTH) revert InvalidDid(did);
        for (uint256 i = 0; i < b.length; ++i) {
            uint8 c = uint8(b[i]);
            if (c >= 128 || (BASE58_ALPHABET >> c) & 1 == 0) revert InvalidDid(did);
        }
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// Returns address(0) for anything but a canonical 65-byte signature.
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address) {
        if (signature.length != 65) return address(0);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > HALF_N || (v != 27 && v != 28)) return address(0);
        return ecrecover(digest, v, r, s);
    }
}
